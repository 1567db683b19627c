"""The `tillpoint` command line (the contract §10).

With --json a command prints one JSON document on stdout and nothing else. Errors print
one line on stderr, `tillpoint: <what is wrong>`, and exit non-zero: 2 for input the
rules refuse (the cache and the ledger are left as they were), 1 for anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import io
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import InputError, TillpointError, edge_of, one_line
from .limits import REQUEST_MAX_BYTES, has_lone_surrogate

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

    from .models import Receipt
    from .results import CheckoutResult

EXIT_OK, EXIT_ERROR, EXIT_INPUT = 0, 1, 2
# The commands sent to the agent serving the data directory when one does (agent/forward.py).
FORWARDED = frozenset(
    {"quote", "checkout", "hold", "confirm", "cancel", "refund", "identify", "balance", "status"}
)

# The contract this build implements, as the head of docs/CONTRACT.md names it ("Contract
# version: `tillpoint.v1`, 2026-11 (sections §1–§17)"; a test keeps the two the same): the
# proto package, the contract's edition and its sections. `tillpoint --version` prints it.
CONTRACT = "tillpoint.v1, 2026-11, sections 1-17"


def version_json() -> dict[str, str]:
    from importlib import metadata

    try:
        version = metadata.version("tillpoint")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        version = "unknown"
    return {"version": version, "contract": CONTRACT}


def version_text() -> str:
    found = version_json()
    return f"tillpoint {found['version']} (contract {found['contract']})"


class _Version(argparse.Action):
    """`--version`, computed only when asked (argparse's own action formats it eagerly)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        if "--json" in getattr(parser, "argv", ()):  # one JSON document, as every --json
            write_out(json.dumps(version_json()) + "\n")
        else:
            write_out(version_text() + "\n")
        parser.exit(EXIT_OK)


class _Parser(argparse.ArgumentParser):
    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        """`--help`'s answer written as every answer is (`write_out`: a closed or full
        stdout is exit 1 and one line, as `--version`'s): argparse wrote it to stderr when
        stdout was closed, and dropped a failed write, both exit 0 (review 42, polish42)."""
        if file is None:
            write_out(self.format_help())
            return
        super().print_help(file)

    def error(self, message: str) -> NoReturn:
        # argparse reads a scanned "-2770000000017-" as an unknown option and then says
        # only that the text is missing: say how to give it
        words = _WORDS.get()
        if words is None:  # a parser used without `main` (a test's): the process's words
            words = sys.argv[1:]
        dashed = [w for w in words if w[:1] == "-" and w[1:2].isdigit()]
        if not dashed and message.startswith("the following arguments are required: RECEIPT_ID"):
            # confirm's and cancel's receipt id as the POS named it ("-neg", which a hold's
            # file and HTTP take): argparse read it as an option and said none was given
            # (review 49, spec49e); those commands have no option of one dash but -h
            dashed = [w for w in words if w[:1] == "-" and w[1:2] not in ("", "-")]
        # only where argparse did not take the word: a value it refused (`--speed -1`,
        # out of range) is not helped by `-- -1`
        unplaced = message.startswith("the following arguments are required") or (
            message.startswith("unrecognized arguments:")
            # the words argparse left, up to a "; --at goes after the command" said after them
            and any(w in message.split(";", 1)[0].split() for w in dashed)
        )
        if dashed and unplaced:
            message += f"; a text that starts with a dash goes after --: -- {dashed[0]}"
        message += _dashed_value(message, words)
        self.exit(EXIT_INPUT, f"tillpoint: {message} (see `{self.prog} --help`)\n")


# The words `main` was given, as given (before `_scanned_text_last`), for the usage errors'
# hints (`_Parser.error`). Not sys.argv: a caller's `main(argv)` (a POS embedding the CLI, a
# test) got the hints of its own process's words, none for `confirm -neg` (review 52, mut52c).
_WORDS: contextvars.ContextVar[Sequence[str] | None] = contextvars.ContextVar(
    "tillpoint_cli_words", default=None
)


def _dashed_value(message: str, words: Sequence[str]) -> str:
    """`confirm r1 --fiscal -FD-1`: argparse reads a value that starts with one dash as an
    option and says the option has none ("argument --fiscal: expected one argument"); say
    how to give it, `--fiscal=-FD-1` (review 49, spec49e). A next word of two dashes is
    another option (`--data-dir --at T`: a script's unset variable), left as said."""
    found = re.match(r"argument (--[\w-]+): expected one argument$", message)
    if found is None:
        return ""
    option = found.group(1)
    for i, word in enumerate(words[:-1]):
        if len(word) > 2 and option.startswith(word):
            value = words[i + 1]
            if value[:1] == "-" and value[1:2] not in ("", "-"):
                return f"; a value that starts with a dash is written {word}={value}"
    return ""


def _common(json_flag: bool = True) -> _Parser:
    """Options accepted after the command too: `tillpoint checkout r.json --data-dir D`."""
    parent = _Parser(add_help=False)
    parent.add_argument(
        "--data-dir", type=_data_dir, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parent.add_argument(
        "--config", type=_config_file, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    if json_flag:
        parent.add_argument("--json", action="store_true", help="print one JSON document")
    return parent


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of `argv` when its options before it are plain ones (or the commands'
    on/off flags, `tillpoint --json identify ...`: `_parse` reads them), else None."""
    words = iter(argv)
    for word in words:
        if word in ("--data-dir", "--config"):
            next(words, None)
        elif word not in _FLAGS_BEFORE and not word.startswith(("--data-dir=", "--config=")):
            return None if word.startswith("-") else word
    return None


# The commands' on/off flags, which `_parse` reads before the command as after it.
_FLAGS_BEFORE = frozenset({"--json", "--explain", "--local"})


# The commands whose one argument is a scanned text (§4), with the options each takes:
# (options, the ones of them that take a value).
_SCANNED_TEXT = {
    "identify": ({"--data-dir", "--config", "--json", "--help", "-h"}, {"--data-dir", "--config"}),
    "scan": ({"--data-dir", "--config", "--json", "--help", "-h"}, {"--data-dir", "--config"}),
    "balance": (
        {"--data-dir", "--config", "--json", "--at", "--help", "-h"},
        {"--data-dir", "--config", "--at"},
    ),
}


def _scanned_text_last(argv: Sequence[str]) -> list[str]:
    """`identify -277-000-000-0017 --json`: dashes of any kind are dropped wherever they
    are (§4), but argparse reads a text that starts with one as an unknown option (only
    "-2770000000017", which looks like a negative number, got through) and then says the
    text is missing. A word after identify, scan or balance that starts with a dash, has a
    digit and names none of the command's options, when the command has no other text, is
    its text: moved after `--` at the end. Anything else is left to argparse."""
    command = _command_of(argv)
    if command not in _SCANNED_TEXT or "--" in argv:
        return list(argv)
    options, with_value = _SCANNED_TEXT[command]
    start = list(argv).index(command) + 1
    dashed: list[int] = []
    plain = 0
    value_next = False
    for i in range(start, len(argv)):
        word = argv[i]
        if value_next:
            value_next = False
        elif not word.startswith("-") or word == "-":
            plain += 1
        else:
            name = word.split("=", 1)[0]
            known = [o for o in options if o == name or (len(name) > 2 and o.startswith(name))]
            if known:
                value_next = "=" not in word and known[0] in with_value and len(known) == 1
            elif any(ch.isdigit() for ch in word):
                dashed.append(i)
    if plain or len(dashed) != 1:
        return list(argv)
    text = argv[dashed[0]]
    return [*argv[: dashed[0]], *argv[dashed[0] + 1 :], "--", text]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; for an `argv` whose command is one of this module's own, without the
    other parts' commands (their modules' imports are a third of a `quote`'s start)."""
    parser = _Parser(
        prog="tillpoint",
        description="Loyalty edge agent for retail checkouts.",
        epilog="Docs: README.md and docs/ in the source tree (/opt/tillpoint on a packaged till).",
    )
    parser.add_argument(
        "--data-dir", type=_data_dir, metavar="DIR", help="the till's data directory"
    )
    parser.add_argument(
        "--config",
        type=_config_file,
        metavar="FILE",
        help="configuration file (TOML; default: $TILLPOINT_CONFIG)",
    )
    parser.add_argument(
        "--version", action=_Version, help="the version and the contract it implements"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = _common()

    snapshot = sub.add_parser("snapshot", help="snapshot commands")
    snap_sub = snapshot.add_subparsers(
        dest="snapshot_command", metavar="ACTION", parser_class=_Parser
    )
    load = snap_sub.add_parser("load", parents=[common], help="apply a snapshot JSON file")
    load.add_argument(
        "file",
        metavar="FILE",
        help="snapshot JSON file (or JSON Lines, a signed bundle), or - for standard input",
    )

    p = sub.add_parser("identify", parents=[common], help="identify a card, phone or barcode")
    p.add_argument("text", metavar="TEXT", help="what was scanned or typed: a card or a phone")
    p = sub.add_parser(
        "scan", parents=[common], help="route a scanned text: a coupon code or a card"
    )
    p.add_argument("text", metavar="TEXT", help="what was scanned: a coupon code or a card")
    for name, what in (
        ("quote", "price a receipt JSON without storing it"),
        ("checkout", "commit a receipt JSON"),
        ("refund", "commit a refund JSON"),
        ("hold", "price a receipt JSON and reserve its redemption until confirm or cancel"),
    ):
        p = sub.add_parser(name, parents=[common], help=what)
        p.add_argument("file", metavar="FILE", help="JSON file, or - for standard input")
        if name != "refund":
            p.add_argument(
                "--explain",
                action="store_true",
                help="add the calculation trace: each line's offers and why they applied or not",
            )
    p = sub.add_parser("confirm", parents=[common], help="commit a held receipt")
    p.add_argument("receipt_id", metavar="RECEIPT_ID", help="the receiptId of the hold")
    p.add_argument(
        "--fiscal", metavar="DOC", help="the fiscal document number (at most 64 characters)"
    )
    p = sub.add_parser("cancel", parents=[common], help="release a held receipt")
    p.add_argument("receipt_id", metavar="RECEIPT_ID", help="the receiptId of the hold")
    p = sub.add_parser("balance", parents=[common], help="available and pending points")
    p.add_argument("card", metavar="CARD", help="a card number or a phone")
    p.add_argument("--at", metavar="TIME", help="an RFC 3339 time with an offset (default: now)")
    sub.add_parser("status", parents=[common], help="cache version, queues, last sync")
    sub.add_parser(
        "run",
        parents=[_common(json_flag=False)],
        help="run the agent service",
        # where it serves (the configuration's defaults, tests/test_review34_doc34.py):
        # an integrator whose port is taken looked here first (review 34)
        description="Serve the till: gRPC PosAgent on 127.0.0.1:50061 ([server] listen,"
        " TILLPOINT_SERVER__LISTEN), HTTP/JSON on 127.0.0.1:8061 ([http] listen,"
        " TILLPOINT_HTTP__LISTEN), metrics on 127.0.0.1:9464 ([metrics] listen,"
        " TILLPOINT_METRICS__LISTEN); and the sync loop, the printer and the display."
        " A POS's guide: docs/INTEGRATION.md.",
    )
    cfg = sub.add_parser("config", help="configuration commands")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    cfg_sub.add_parser("check", parents=[common], help="validate the configuration and show it")
    p = sub.add_parser(
        "reset",
        parents=[common],
        help="forget the cache and the ledger, keeping the till's numbering",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--force", action="store_true", help="discard transactions the hub has not acknowledged"
    )
    for name in FORWARDED:
        sub.choices[name].add_argument(
            "--local",
            action="store_true",
            help="run here, not in the `tillpoint run` serving this data directory",
        )
    if argv is not None and _command_of(argv) in sub.choices:
        return parser
    # The other parts' commands (`hub ...`, `sync ...`, `print ...`, `demo`), listed in
    # the composition root; each sets `handler(settings, args) -> int`.
    from .app import add_commands

    add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `tillpoint` command (`argv` None: the process is tillpoint's), or its
    arguments run in a caller's own process (a test, a bench, a program embedding the
    CLI), which is left as it was found: its environment (GRPC_VERBOSITY,
    PYDANTIC_DISABLE_PLUGINS), pydantic's plugin loader, its stdout's and stderr's
    encodings (review 38, rev38i; review 39, rev39b: GRPC_VERBOSITY and the streams
    were left changed there for good), its root logger's handlers and level and its
    SIGTERM, SIGINT and SIGHUP handlers (review 46, flake46: `run` and `hub serve` left
    theirs, INFO to that call's stderr and a relay to their ended stop, for good), and
    its cyclic collector (session 47: a `run` that served left every object of the
    process frozen, never collected, and the young threshold at 10,000). glibc's malloc
    arena limit a `run` sets stays: glibc cannot lift it again, and it costs no speed."""
    if argv is None:
        return _main(None)
    import gc
    import logging
    import signal
    import threading

    root = logging.getLogger()
    logged = root.handlers[:], root.level
    stopping = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    handlers = [signal.getsignal(signum) for signum in stopping]
    collector = gc.get_threshold(), gc.get_freeze_count()
    stderr = sys.stderr
    codings = [
        (stream, stream.encoding, stream.errors)
        for stream in (sys.stdout, sys.stderr)
        if isinstance(stream, io.TextIOWrapper)
    ]
    try:
        return _main(argv)
    finally:
        given = sys.stderr
        if isinstance(given, ErrorLines):  # `_main`'s: the caller's own stream back
            given = given.stream
            sys.stderr = stderr
        if stderr is None:  # `_main` gave it /dev/null for its error lines
            with contextlib.suppress(Exception):
                given.close()
            sys.stderr = stderr
        for stream, encoding, errors in codings:
            with contextlib.suppress(Exception):  # a stream its reader closed: as it is
                stream.reconfigure(encoding=encoding, errors=errors)
        root.handlers[:] = logged[0]
        root.setLevel(logged[1])
        if threading.current_thread() is threading.main_thread():  # only it sets them
            for signum, handler in zip(stopping, handlers, strict=True):
                if handler is not None and signal.getsignal(signum) != handler:
                    signal.signal(signum, handler)
        gc.set_threshold(*collector[0])
        if not collector[1] and gc.get_freeze_count():  # a caller's own freeze stays
            gc.unfreeze()


def _main(argv: Sequence[str] | None) -> int:
    grpc_verbosity_set = "GRPC_VERBOSITY" in os.environ
    if argv is None:  # the `tillpoint` command: the process is tillpoint's
        # gRPC's C core logs connection events to stderr; ours go through `logging`.
        # (Read by gRPC at its import, after the command is known: a one-shot's is NONE,
        # below.) Not in a caller's process (`main(argv)`): its gRPC logs are its own,
        # and gRPC's default with the variable unset is ERROR's lines too (rev39b).
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        # tillpoint runs no pydantic plugin: without this pydantic imports importlib.metadata
        # and reads every installed package's entry points at the first model it builds,
        # ~10 % of a one-shot call's start (docs/PERFORMANCE.md, review 38). A value set
        # outside (empty: load them) is kept. Not in a caller's process (`main(argv)`):
        # its models lost their plugins for good, whatever it set later (rev38i).
        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
        _no_pydantic_plugin_loader()
    if sys.stderr is None:  # `2>&-`: print(file=None) wrote the error lines to stdout
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (the process's)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            # the error lines escape what is not UTF-8 text (a word of the command line in
            # a script's other bytes, echoed by argparse's "unrecognized arguments"): with
            # the encoding's strict default they said "internal error", exit 1 (rev36f)
            errors = "backslashreplace" if stream is sys.stderr else None
            reconfigure(encoding="utf-8", errors=errors)
    sys.stderr = ErrorLines(sys.stderr)  # a line stderr does not take changes no exit code
    process_ends = argv is None  # the `tillpoint` command: its exit follows (`_AfterAnswer`)
    if argv is None:
        argv = sys.argv[1:]
        from .logs import setup_one_shot

        setup_one_shot()  # its warnings as its lines are; `run`, `hub serve` set up their own
    words = _WORDS.set(list(argv))  # the usage errors' hints read them (`_Parser.error`)
    after: _AfterAnswer | None = None  # a committing call's: from its answer on
    try:
        argv = _scanned_text_last(argv)
        parser = build_parser(argv)
        vars(parser)["argv"] = list(argv)  # `--version --json` reads it
        # `--version` writes its line while the arguments are read: inside the handlers
        # below, so a closed or full stdout is worded, not a traceback.
        args = _parse(parser, argv)
        args.process_ends = process_ends
        if process_ends and not grpc_verbosity_set and not serves(args):
            # a one-shot's stderr is its own lines (CONTRACT §10): the C core's errors
            # (six lines for a damaged device certificate before every sale, the
            # command's own line saying it where it matters) are not (review 38, rev38f)
            os.environ["GRPC_VERBOSITY"] = "NONE"
        if args.command in ANSWER_STANDS:  # `emit` starts it, run here or forwarded
            after = args.after = _AfterAnswer(process_ends=process_ends)
        if args.command is None:  # a usage error: the help on stderr, as argparse's own are
            parser.print_help(sys.stderr)
            return EXIT_INPUT
        if args.command in FORWARDED:
            from . import forward

            with contextlib.suppress(forward.NotForwarded):
                return forward.forward(args)  # to `tillpoint run` when it serves
        return _dispatch(parser, args)
    except TillpointError as exc:
        edge = edge_of(exc)
        print(f"tillpoint: {edge.message}", file=sys.stderr)
        return edge.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as exc:
        gone = _stdout_gone(sure=isinstance(exc, OutputCut))
        if gone:  # `tillpoint status --json | head -c 0`: not a bug of ours
            print(
                f"tillpoint: the output was cut off: its reader ({gone}) closed before the end"
                " (what the command did stands)",
                file=sys.stderr,
            )
        else:
            print(
                f"tillpoint: internal error: BrokenPipeError: {one_line(str(exc))}",
                file=sys.stderr,
            )
        return EXIT_ERROR
    except Exception as exc:  # the last line of defence: one line, never a traceback
        print(
            f"tillpoint: internal error: {type(exc).__name__}: {one_line(str(exc))}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    finally:
        _WORDS.reset(words)
        if after is not None:  # after the hub link's and the files' closes
            after.end()


class ErrorLines:
    """stderr while a command runs (`_main`): a line the stream does not take (a pipe
    its reader closed, `/dev/full`, a socket shut for reading) is lost, and the command
    exits as it would have. The write's error escaped the handler that was printing the
    command's one line: bad input (exit 2) and a refused call (a `forward`ed one's code)
    exited 1, with a traceback nobody could read (review 40, rev40c); a POS that sends
    stderr nowhere reads only the exit code, which must say what the command did."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self.stream.write(text))
        except (OSError, ValueError):  # ValueError: a stream closed under it
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding … the stream's
        return getattr(self.stream, name)


# What pydantic's plugin loader answers while PYDANTIC_DISABLE_PLUGINS disables them all.
_PLUGINS_OFF = ("__all__", "1", "true")


def _no_pydantic_plugin_loader() -> None:
    """With pydantic's plugins disabled (`main`), its plugin loader (`pydantic.plugin.
    _loader`, its one function `get_plugins`, called at every validator built) only
    answers "none", yet it imports importlib.metadata at its start, and email, zipfile,
    csv and tempfile under it: ~5 % of a one-shot call's start, for nothing. Given here
    in its place, answering as it does then (tests/test_review38_perf38.py compares
    them); a value of the variable that lets any plugin load keeps pydantic's own."""
    name = "pydantic.plugin._loader"
    if os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in _PLUGINS_OFF or name in sys.modules:
        return
    import types

    loader = types.ModuleType(name, "pydantic's plugin loader with every plugin disabled")
    loader.get_plugins = lambda: ()  # type: ignore[attr-defined]
    sys.modules[name] = loader


def serves(args: argparse.Namespace) -> bool:
    """Whether the command serves (`run`, `hub serve`: they log as configured) or plays a
    hub and tills of its own (`demo`): gRPC's C core keeps its ERROR lines there; a
    one-shot command's are silenced (GRPC_VERBOSITY=NONE unless the environment sets
    it). The other `hub` commands (`hub import`, `hub enroll`, `hub status` …) are
    one-shots like the till's: they kept ERROR until review 39 (rev39b, rev38k's left
    item; DECISIONS, "Review 39 (rev39b)")."""
    if args.command == "hub":
        return getattr(args, "hub_command", None) == "serve"
    return args.command in ("run", "demo")


# The committing calls (a sale, a hold, its confirmation or cancel, a refund): from
# their answer on a stop does not change the exit code (`_AfterAnswer`), whether they
# run here, with a hub or without one, or are forwarded to `tillpoint run`.
ANSWER_STANDS = frozenset({"checkout", "hold", "confirm", "cancel", "refund"})


# A `hub` command's text operands, which reach the hub's store (a device id, a customer, a
# receiptId); paths are not among them (a file's name is the bytes it has).
HUB_TEXT_OPERANDS = ("device", "customer", "receipt")


def _refuse_non_utf8(args: argparse.Namespace, what: str) -> None:
    """Bad input (exit 2) for a text operand in a script's other bytes (surrogate-escaped):
    the hub's store refused it with "internal error: UnicodeEncodeError", exit 1 (rev36f)."""
    from .limits import is_utf8_text

    for name in HUB_TEXT_OPERANDS:
        value = getattr(args, name, None)
        if isinstance(value, str) and not is_utf8_text(value):
            raise InputError(f"{what.strip()}: {name} is not UTF-8 text")


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`parser.parse_args`, with the errors argparse leaves to the top parser said by the
    command's own (its `--help` is the page that helps), before anything is opened: an
    extra argument ("see `tillpoint quote --help`", not the list of commands), and a
    `snapshot` or `config` without its action (it made the data directory and read the
    configuration first)."""
    _refuse_valued_option_before_command(parser, argv)
    args, extras = parser.parse_known_args(argv)
    chosen = parser
    while True:
        found = next(
            (a for a in chosen._actions if isinstance(a, argparse._SubParsersAction)), None
        )
        if found is None:
            break
        value = getattr(args, found.dest, None)
        if value is None or value not in found.choices:
            if chosen is not parser and found.dest in _ACTIONS and not extras:
                chosen.error(f"{args.command} needs an action: {', '.join(found.choices)}")
            break
        chosen = found.choices[value]
    # The words left over that were written after `--` (operands, never options): a flag's
    # whole name there is taken as at the session's start (`identify -- -5x --json`), but
    # not a shortened one, and none is said to go after the command, where it is already
    # (review 32, rev32c: `checkout -- r.json --exp` ran with explain, and `confirm ID --
    # --fisc F` was told "--fiscal goes after the command").
    operands = _after_dashes(argv, extras)
    flags = [w not in operands or w in chosen._option_string_actions for w in extras]
    if (
        extras
        and chosen is not parser
        and all(ok and _is_flag_of(chosen, w) for ok, w in zip(flags, extras, strict=True))
    ):
        # `tillpoint --data-dir D --json status`: a flag of the command given before it
        # means what it means after it (as --data-dir is taken on either side)
        for word in extras:
            action = _top_option(chosen, word)
            assert action is not None  # `_is_flag_of` found it
            setattr(args, action.dest, action.const)
        return args
    if extras:
        # a flag of the command given before it is taken (above): the others are the fault
        # (`tillpoint --json status extra` blamed --json, "--json goes after the command")
        if chosen is not parser:
            extras = [
                w
                for ok, w in zip(flags, extras, strict=True)
                if not (ok and _is_flag_of(chosen, w))
            ]
        # `tillpoint --at=T balance CARD`: an option with a value given before the command
        # as given (`--at=T`), a shortened name written whole (`--fisc=F`: `--fiscal=F`)
        operands = _after_dashes(argv, extras)
        known = [
            _spelt_whole(chosen, w) for w in extras if w not in operands and _top_option(chosen, w)
        ]
        where = (
            f"; {known[0]} goes after the command: {chosen.prog} ... {known[0]}"
            if known and chosen is not parser
            else ""
        )
        chosen.error(f"unrecognized arguments: {' '.join(extras)}{where}")
    return args


def _after_dashes(argv: Sequence[str], extras: list[str]) -> set[str]:
    """The words of `extras` that `argv` has only after its first `--` (operands there,
    whatever they spell); a word also written before it is not one of them."""
    if "--" not in argv:
        return set()
    at = list(argv).index("--")
    before, after = set(argv[:at]), set(argv[at + 1 :])
    return {w for w in extras if w in after and w not in before}


def _refuse_valued_option_before_command(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> None:
    """`tillpoint --at T balance CARD`: an option of the command that takes a value, given
    before it with the value as the next word, is said to go after the command, as
    `--at=T` before it is (argparse took the value for the command's name: "invalid
    choice: 'T'"). The words before the command are read as the top parser reads them:
    its own options' values (`--data-dir balance`) are skipped."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return
    words = list(argv)
    free: list[str] = []  # the words before the command that are not the top's own
    i = 0
    while i < len(words) and words[i] != "--":
        word = words[i]
        action = _top_option(parser, word)
        if action is not None:
            if action.nargs == 0:  # `--version`, `--help`: they answer first
                return
            if "=" not in word:
                if i + 1 == len(words) or _not_a_value(parser, words[i + 1]):
                    return  # `--data-dir $UNSET --at T ...`: argparse says it has no value
                i += 1
            i += 1
            continue
        if word in sub.choices:
            command = sub.choices[word]
            for at, before in enumerate(words[:i]):
                if before not in free or "=" in before:  # `--at=T`: `_parse` says it
                    continue
                # shortened too (`--fisc F confirm ID`: argparse took F for the command's
                # name, "invalid choice: 'F'", until review 32)
                found = _top_option(command, before)
                if found is not None and found.nargs != 0:
                    # its value, the next word, unless that is the command itself
                    # (`--at balance CARD` said "unrecognized arguments: --at balance")
                    given = " ".join(words[at : min(at + 2, i)])
                    name = _long_name(found)
                    command.error(
                        f"unrecognized arguments: {given}; {name} goes after the command:"
                        f" {command.prog} ... {name}"
                    )
            return
        free.append(word)
        i += 1


def _top_option(parser: argparse.ArgumentParser, word: str) -> argparse.Action | None:
    """The option of `parser` (the top parser's, or a command's) `word` names as argparse
    reads it: whole, shortened while it names one (`--data`, `--fisc`), or with its value
    after `=`."""
    if not word.startswith("-"):
        return None
    name = word.split("=", 1)[0] if word.startswith("--") else word
    options = parser._option_string_actions
    if name in options:
        return options[name]
    named = {options[o] for o in options if o.startswith("--") and o.startswith(name)}
    return named.pop() if len(name) > 2 and len(named) == 1 else None


def _long_name(action: argparse.Action) -> str:
    """An option's whole long name (`--fiscal` for a `--fisc` given)."""
    return max(action.option_strings, key=len)


def _spelt_whole(parser: argparse.ArgumentParser, word: str) -> str:
    """`word` with the option it names written whole (`--fisc=F`: `--fiscal=F`)."""
    name, sep, value = word.partition("=")
    action = _top_option(parser, word)
    if action is None or name in action.option_strings:
        return word
    return f"{_long_name(action)}{sep}{value}"


def _not_a_value(parser: argparse.ArgumentParser, word: str) -> bool:
    """Whether argparse refuses `word` as an option's value: a dashed word (`--at`), not
    `-` and not a negative number."""
    return (
        word[:1] == "-"
        and word != "-"
        and " " not in word
        and not parser._negative_number_matcher.match(word)
    )


def _is_flag_of(parser: argparse.ArgumentParser, word: str) -> bool:
    """Whether `word` is an on/off option of `parser` (`--json`, `--explain`, `--local`),
    whole or shortened as argparse takes it after the command (`--js`)."""
    action = _top_option(parser, word) if "=" not in word else None
    return isinstance(action, argparse._StoreTrueAction)


# The commands of this module that take an action (`hub`, `sync` and `print` say their own).
_ACTIONS = frozenset({"snapshot_command", "config_command"})


def _stdout_gone(*, sure: bool = False) -> str | None:
    """What stdout was ("a pipe", "a socket") when its reader has left, else None. If
    so, stdout is pointed at /dev/null, so the interpreter's flush at exit adds no
    "Exception ignored" lines. A pipe whose reader closed polls POLLERR; a Unix socket
    whose peer closed (a Node POS's child stdio, systemd's `StandardOutput=socket`)
    POLLHUP only: it said "internal error: BrokenPipeError" (review 38, rev38j). `sure`:
    the broken pipe was a write to stdout's own descriptor (`write_out`), whatever poll
    says: a Unix socket its peer shut for reading only (`shutdown(SHUT_RD)`, Go's
    `CloseRead`) polls neither, and said "internal error" too (review 39, rev39b)."""
    import select
    import stat

    try:
        fd = sys.stdout.fileno()
        if not sure:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            gone = select.POLLERR | select.POLLHUP
            if not any(events & gone for _, events in poller.poll(0)):
                return None  # stdout is fine: the broken pipe was another's (a socket)
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return None
    _stdout_to_devnull()
    return "a socket" if stat.S_ISSOCK(mode) else "a pipe"


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null: what is still buffered for a stdout that failed would
    fail again at exit ("Exception ignored" lines)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import config as config_mod

    # `--config` wins over TILLPOINT_CONFIG, which names the file when no flag does.
    config_file = args.config
    if config_file is None and os.environ.get("TILLPOINT_CONFIG"):
        config_file = Path(os.environ["TILLPOINT_CONFIG"])
    settings = config_mod.load(config_file, data_dir=args.data_dir)
    from .privileges import check_data_dir, run_as_owner

    check_data_dir(settings.data_dir)  # a file named as the data directory: one line, exit 2
    run_as_owner(settings.data_dir)  # as root on an installed till: become its owner
    command: str = args.command
    handler = getattr(args, "handler", None)
    if handler is not None:
        if command == "hub":  # the hub's store takes UTF-8 text only (§10, rev36f)
            _refuse_non_utf8(args, "hub " + str(getattr(args, "hub_command", "") or ""))
        return int(handler(settings, args))
    if command == "run":
        from .app import run

        return run(settings, config_file)
    if command == "config":
        if args.config_command != "check":
            parser.error("config needs an action: check")
        from tillpoint.printer.service import load_configs

        loose = config_mod.loose_values(settings)  # what `run` takes with a warning, refused here
        if loose:
            more = f" (and {len(loose) - 1} more problem(s))" if len(loose) > 1 else ""
            raise InputError(f"{loose[0]}{more}")
        clash = config_mod.listen_clash(settings)  # what `run` refuses to start with
        if clash:
            raise InputError(f"config: {clash}")

        devices = load_configs(settings.printer, settings.display, settings.scanner)
        if devices[0].kind != "none":
            # the profile as `run` resolves it (PrinterConfigError, exit 2): an unknown
            # one, or one without a slot for the code page, passed the check and `run`
            # then refused to start
            from tillpoint.printer.profiles import resolve_profile

            resolve_profile(devices[0])
        shown = settings.model_dump(mode="json")
        for name, model in zip(("printer", "display", "scanner"), devices, strict=True):
            shown[name] = model.model_dump(mode="json")
        for section in ("server", "http"):  # a check's output lands in tickets and logs
            if shown[section]["token"]:
                shown[section]["token"] = "(set)"
        # --json: proto3's lowerCamelCase keys like every other --json document; the text
        # form shows the names as they are written in the TOML file.
        return emit(
            args,
            camel_keys(shown),
            lambda _: "configuration is valid\n" + json.dumps(shown, indent=2, ensure_ascii=False),
        )

    from tillpoint.sync import require_device

    from .app import agent_with_hub, local_hub
    from .results import json_of, receipt_from_json, refund_from_json

    if command == "reset":
        # Never under a running agent: it keeps the old data in memory and would go on
        # pricing from it (a snapshot of the same version loaded after the reset).
        from .errors import Refused
        from .lock import DataDirLock

        try:
            lock = DataDirLock(settings.data_dir).acquire()
        except Refused as exc:
            raise Refused(f"reset refused: {exc.message}: stop it first") from None
        try:
            return _run_reset(args, settings)
        finally:
            lock.release()

    if command != "status":  # enrolled as another device: refused (status still answers)
        require_device(settings.data_dir, settings.device_id)
    # the calls that price or release: with the till's hub, as `run` would answer them
    # (confirm too: the holds it finds expired are released there, the contract §11)
    hub = (
        local_hub(settings)
        if command in ("quote", "checkout", "hold", "confirm", "cancel")
        else None
    )
    agent = agent_with_hub(settings, hub)
    try:
        if command == "snapshot":
            if args.snapshot_command != "load":
                parser.error("snapshot needs an action: load")
            loaded = load_snapshot(agent, args.file)
            if loaded.ignored:  # stderr: --json's stdout stays the one document
                from .cache import ignored_note

                print(f"tillpoint: warning: {ignored_note(loaded.ignored)}", file=sys.stderr)
            info: dict[str, Any] = {"version": loaded.version, "issuedAt": loaded.issued_at or ""}
            if loaded.unchanged:
                info["unchanged"] = True
            return emit(
                args,
                info,
                lambda d: (
                    f"snapshot version {d['version']} is loaded already: nothing changed"
                    if d.get("unchanged")
                    else f"snapshot version {d['version']} loaded"
                ),
            )
        if command == "identify":
            return emit(args, json_of(agent.identify(args.text)), _human_card)
        if command == "scan":
            return emit(args, json_of(agent.scan(args.text)), _human_scan)

        # what a commit's text says of its offers: queued, or picked with no printer (§7)
        def human(r: dict[str, Any]) -> str:
            return _human_result(r, printer=agent.device_kinds.get("printer") != "none")

        if command in ("quote", "checkout", "hold", "confirm", "cancel"):
            # a Hold priced OFFLINE after a late grant owes the hub a shrink: told here,
            # the agent leaves it to the sending after the answer (it sent it in the
            # Hold's call, before the answer: review 38, rev37a's left item)
            import threading

            shrink_owed = threading.Event()
            if hub is not None and command == "hold":
                agent.on_hub_call_owed(shrink_owed.set)
            if command == "confirm":
                code = emit(args, json_of(agent.confirm(args.receipt_id, args.fiscal)), human)
            elif command == "cancel":
                code = emit(args, json_of(agent.cancel(args.receipt_id)), _human_result)
            else:
                call: Callable[[Receipt], CheckoutResult] = getattr(agent, command)
                receipt = read_json(args.file)
                if args.explain and isinstance(receipt, dict):
                    receipt = {**receipt, "explain": True}
                code = emit(args, json_of(call(receipt_from_json(receipt))), human)
            if hub is not None and command != "quote":  # a quote writes nothing
                # the answer is out: then the releases owed to the hub from earlier (holds
                # closed while it was away), as `run`'s hold timer sends them, within the
                # redemption deadline (the contract §11); a stop from here on ends only that
                after = getattr(args, "after", None) or _AfterAnswer(process_ends=False)
                after.start().send_owed(hub, agent, shrink_owed=shrink_owed.is_set())
            return code
        if command == "refund":
            refund = refund_from_json(read_json(args.file))
            return emit(args, json_of(agent.refund(refund)), _human_refund)
        if command == "balance":
            at = parse_time(args.at) if args.at is not None else None
            return emit(args, json_of(agent.balance(args.card, at)), _human_balance)
        if command == "status":
            from .wire import status_json

            data_dir = settings.data_dir
            return emit(
                args,
                status_json(agent.status()),
                lambda s: _human_status(s) + _not_served_note(data_dir, s),
            )
    finally:
        agent.close()
        if hub is not None:
            hub.close()
    parser.error(f"unknown command {command}")


class _StoppedSending(BaseException):
    """A stop (SIGTERM, SIGINT) while a one-shot command sends what it owes the hub after
    its answer. A BaseException, so that nothing on the way (`except Exception` of a
    release's retries) takes it for the hub's error."""


class _AfterAnswer:
    """From a committing one-shot command's answer (`ANSWER_STANDS`; `emit` starts it) to
    the end of its process: the releases owed to the hub (`TillSync.send_owed`, with a
    hub), then the hub link's and the files' closes and the interpreter's exit (together
    up to a second; 150-250 ms without a hub, 7-40 ms forwarded to `tillpoint run`). A
    SIGTERM, a Ctrl-C (SIGINT) or a hang-up (SIGHUP, review 38) then ends the sending,
    which it cuts short (what was not sent stays owed for the next command), and does
    not change the exit code: the answer
    is written and stands (a sale committed), so the process exits as it said (the
    contract §10, §11). Until review 37 it died of the SIGTERM (-15, a shell's 143) or
    exited 130 after a committed sale's answer, and a POS that reads the exit code first
    took the sale for a failed one (rev37a guarded a till with a hub; rev37f a till
    without one and a call forwarded to `run`). `process_ends`: `main` was called as the
    `tillpoint` command (not with the arguments of a caller in its own process), whose
    exit follows: the signals stay ignored through it, not handed back."""

    def __init__(self, *, process_ends: bool) -> None:
        import signal
        import threading

        # imported now, before the call: in the CLI's fast path (a call forwarded to
        # `run`) importing them after the answer left its first millisecond unguarded
        self._signal, self._threading = signal, threading
        self.process_ends = process_ends
        self.sending = False
        self.before: dict[int, Any] = {}

    def start(self) -> _AfterAnswer:
        """From the answer on; `emit` calls it as it writes a committing call's answer,
        the call done (its sale committed): a stop from then on ends it no more, even one
        taken before the answer's last byte (the process ends as its answer says)."""
        signal, threading = self._signal, self._threading
        if self.before or threading.current_thread() is not threading.main_thread():
            return self  # started already; or a caller's thread: signals are the main one's
        # SIGHUP too: a POS's terminal or ssh session closed (review 38: it died -1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.before[signum] = signal.signal(signum, self._stopping)
        return self

    def _stopping(self, signum: int, frame: Any) -> None:
        if self.sending:
            raise _StoppedSending  # out of the call to the hub on its way

    def send_owed(self, hub: Any, agent: Any, *, shrink_owed: bool = False) -> None:
        """`shrink_owed`: this command's Hold owes its late grant's shrink (sent though
        its request's deadline marked the hub away: the hub answered it, late)."""
        try:
            self.sending = True
            try:
                hub.send_owed(agent, shrink_owed=shrink_owed)
            finally:
                self.sending = False
        except (_StoppedSending, KeyboardInterrupt):
            pass  # stopped: what is owed to the hub is left for the next command

    def end(self) -> None:
        signal = self._signal
        for signum, before in self.before.items():
            if self.process_ends:
                signal.signal(signum, signal.SIG_IGN)
            elif before is not None:
                signal.signal(signum, before)


def _run_reset(args: argparse.Namespace, settings: Any) -> int:
    """`reset`, with `run`'s hub, which releases what the open holds it forgets reserved
    there; the caller holds the data directory's lock."""
    from .app import agent_with_hub, reset_hub

    hub = reset_hub(settings)
    agent = agent_with_hub(settings, hub)
    try:
        _confirm_reset(args, agent)
        done = agent.reset(force=args.force)
        return emit(
            args,
            {
                "reset": True,
                "discardedTransactions": done.discarded,
                "hubHoldsReleased": done.hub_holds_released,
                "hubHoldsLeft": done.hub_holds_left,
                "hubReleasesOwed": done.hub_releases_owed,
                "hubReleasesOwedUntil": done.hub_releases_owed_until,
            },
            _human_reset,
        )
    finally:
        agent.close()
        if hub is not None:
            hub.close()


def _human_reset(d: dict[str, Any]) -> str:
    said = ["the till's cache and ledger are empty; numbering continues"]
    if d["discardedTransactions"]:
        said.append(f"{d['discardedTransactions']} unsent transaction(s) discarded")
    if d["hubHoldsReleased"]:
        said.append(f"{d['hubHoldsReleased']} hold(s) released at the hub")
    if d["hubHoldsLeft"]:
        said.append(
            # a release answered too late may have been done there all the same (review
            # 47, late47): what the till knows is that no answer came in time
            f"{d['hubHoldsLeft']} hold(s) not known released: the hub did not answer in"
            " time (any still held there expires on its own)"
        )
    if d["hubReleasesOwed"]:
        # a grant asked for within the last minute may still reach the hub after the
        # release (review 46, reset46): owed, sent again by the till's next process
        said.append(
            f"{d['hubReleasesOwed']} release(s) still owed to the hub until"
            f" {d['hubReleasesOwedUntil']} (a hold of the last minute whose grant may"
            " still land there): `tillpoint run` sends them again at its start and every"
            " round, or run `tillpoint sync now` once that time has passed"
        )
    return "; ".join(said)


def _confirm_reset(args: argparse.Namespace, agent: Any) -> None:
    """`reset` asks on a terminal; without one it needs --yes (a script must mean it)."""
    depth = int(agent.status().outbox_depth)
    if args.yes or (depth and not args.force):
        return  # (the second: `Agent.reset` refuses, saying why)
    terminal = sys.stdin is not None and sys.stderr is not None  # `<&-`: no one to ask
    if not (terminal and sys.stdin.isatty() and sys.stderr.isatty()):
        raise InputError("reset forgets the cache and the ledger: add --yes to confirm")
    unsent = f" and discard {depth} unsent transaction(s)" if depth and args.force else ""
    print(
        f"Forget the cache and the ledger of {agent.device_id} in {agent.data_dir}{unsent}? [y/N] ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise InputError("reset cancelled")


def load_snapshot(agent: Any, name: str) -> Any:
    """`snapshot load FILE`: a JSON document, a signed bundle, or JSON Lines (streamed);
    FILE `-` is standard input (`zcat snap.jsonl.gz | ...`), and a FILE that is no regular
    file (`/dev/stdin` under a pipe, `<(zcat ...)`, a named FIFO) is read once as standard
    input is (review 40, spec40b: it was opened again after its first line was read, so a
    pipe was then empty, "not valid JSON", and a FIFO blocked for ever)."""
    from .snapshot_stream import is_jsonl, keep_repeats, refuse_repeats

    if name == "-":
        doc = _snapshot_stream(agent, standard_input(), name)
    else:
        try:
            with open(name, "rb") as f:
                import stat

                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    doc = _snapshot_stream(agent, f, name)
                else:
                    doc = None
                    if is_jsonl(_head_line(f)):
                        from tillpoint.sync import refuse_plain_if_enrolled

                        refuse_plain_if_enrolled(agent.data_dir)  # the one rule, sync's
                        return agent.load_snapshot_file(Path(name))  # a full one: child processes
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except OSError as exc:
            raise InputError(f"{name}: cannot read it ({exc.strerror})") from None
        if doc is None:
            # a snapshot, not a request: no request limit; a section given twice is refused
            doc = read_json(name, limit=None, pairs_hook=keep_repeats)
    if isinstance(doc, _Loaded):
        return doc.info
    refuse_repeats(doc, "snapshot")
    from tillpoint.sync import load_snapshot_file

    return load_snapshot_file(agent, doc)


class _Loaded:
    """A JSON Lines snapshot `_snapshot_stream` applied as it read it."""

    def __init__(self, info: Any) -> None:
        self.info = info


def _snapshot_stream(agent: Any, stream: Any, name: str) -> Any:
    """A snapshot read once from a stream (standard input, a pipe): the JSON document it
    holds, or, for JSON Lines, `_Loaded` once it is applied row by row as it is read."""
    from .snapshot_stream import is_jsonl, keep_repeats, refuse_non_object, stream_lines

    try:
        first = _head_line(stream)
        head = first.encode("utf-8") if isinstance(first, str) else first
        if is_jsonl(head):
            from tillpoint.sync import refuse_plain_if_enrolled

            refuse_plain_if_enrolled(agent.data_dir)
            # the header line's rest (a longer one), then the rows: no line read past
            # `LINE_MAX_BYTES` (review 42, left42: each was read whole)
            return _Loaded(agent.load_snapshot_lines(stream_lines(stream, first)))
        refuse_non_object(head, name)  # not `/dev/zero` read whole
        rest = _bounded_rest(stream, STREAM_DOCUMENT_MAX_BYTES - len(head), name)
    except OSError as exc:
        raise InputError(f"{name}: cannot read it ({exc})") from None
    raw = head + (rest.encode("utf-8") if isinstance(rest, str) else rest)
    return parse_json(raw, name, keep_repeats)


# A snapshot that is one JSON document, read from a stream (standard input, a pipe or a
# FIFO named as a file), is held whole in memory; past this it is refused, as a pull
# refuses a bundle above its limit (review 40, rev40f: `{"a":` followed by `yes` grew the
# process by 1.7 GB in 4 s until the machine ran out). A regular file's size is its own
# bound; a chain's large snapshot is JSON Lines, applied row by row, and not bounded here.
STREAM_DOCUMENT_MAX_BYTES = 1 << 30


def _bounded_rest(stream: Any, room: int, name: str) -> Any:
    """The rest of a stream, refused once more than `room` bytes (or characters) came."""
    parts: list[Any] = []
    got = 0
    while True:
        block = stream.read(min(1 << 20, max(room - got, 0) + 1))
        if not block:
            break
        parts.append(block)
        got += len(block)
        if got > room:
            raise InputError(
                f"{name}: a snapshot document read from a pipe larger than"
                f" {STREAM_DOCUMENT_MAX_BYTES // (1 << 20)} MiB is refused: give it as a"
                " file, or as JSON Lines (applied row by row)"
            )
    return parts[0][:0].join(parts) if parts else b""


# How much of a snapshot's first line is read to tell JSON Lines from one JSON document: a
# hub writes its header with sorted keys, `format` after `appliedThrough` (every till of
# the hub: ~17 bytes each), so 4 KiB held it for ~240 tills only.
HEAD_LINE_BYTES = 1 << 20


def _head_line(f: Any) -> Any:
    """A snapshot's first line (bytes, or text from a text stream): 4 KiB, and when that is
    an object's start with no end of line, the line up to `HEAD_LINE_BYTES` (`/dev/zero`
    and a one-line document cost at most that)."""
    from .snapshot_stream import HEAD_BYTES

    first = f.readline(HEAD_BYTES)
    text = first if isinstance(first, str) else first.decode("utf-8", "replace")
    if text.endswith("\n") or not text.lstrip("\ufeff \t\r").startswith("{"):
        return first
    return first + f.readline(HEAD_LINE_BYTES)


def read_json(
    name: str,
    limit: int | None = REQUEST_MAX_BYTES,
    pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """A JSON document from a file or stdin (`-`). A request (the default `limit`) larger
    than 4 MiB is refused before it is read whole or parsed; a snapshot passes None, and
    is read whole only once its first bytes could start one (not `/dev/zero`)."""

    def whole(stream: Any) -> Any:
        if limit is not None:
            return stream.read(limit + 1)
        from .snapshot_stream import HEAD_BYTES, refuse_non_object  # not on a request's path

        head = stream.read(HEAD_BYTES)
        refuse_non_object(head.encode("utf-8") if isinstance(head, str) else head, name)
        return head + stream.read()

    try:
        if name == "-":
            stdin: Any = standard_input()  # bytes, or text if replaced
            got = whole(stdin)
            raw = got.encode("utf-8") if isinstance(got, str) else got
        else:
            path = Path(name)
            if limit is not None and path.stat().st_size > limit:
                raise InputError(_too_large(name, limit))
            with path.open("rb") as f:
                raw = whole(f)
        if limit is not None and len(raw) > limit:
            raise InputError(_too_large(name, limit))
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except OSError as exc:  # "Is a directory", not "[Errno 21] Is a directory: 'adir'"
        raise InputError(f"{name}: cannot read it ({exc.strerror or exc})") from None
    return parse_json(raw, name, pairs_hook)  # the bytes, read as an HTTP body is


def standard_input() -> Any:
    """Standard input to read a file `-` from: its bytes (or text, if replaced). A closed
    one (`tillpoint quote - <&-`: Python's sys.stdin is None) is bad input, exit 2; it
    was "internal error: AttributeError"."""
    if sys.stdin is None:
        raise InputError("-: standard input is closed: name the file instead")
    return getattr(sys.stdin, "buffer", sys.stdin)


def _data_dir(text: str) -> Path:
    """`--data-dir`: an empty one is refused, not taken for the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return Path(text)


def _config_file(text: str) -> Path:
    """`--config`: an empty one (a script's unset variable) is refused, as `--data-dir`'s
    is; it was read as the current directory ("cannot read config .: Is a directory")."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return Path(text)


def parse_json(
    text: str | bytes,
    name: str,
    pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """A JSON document as every input of tillpoint is read (files, stdin, HTTP bodies):
    UTF-8 (a byte order mark, which Windows tools write, is skipped; UTF-16 is not JSON
    between systems, RFC 8259), no floats (money is minor units, quantities decimal
    strings), no NaN/Infinity."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if "\x00" in text:
            # A raw NUL is never in a JSON text (RFC 8259 §7 escapes every control
            # character), but is valid UTF-8: UTF-16 or UTF-32 without a byte order mark (a
            # .NET `Encoding.Unicode`) was read as JSON and refused at its first NUL with
            # "Expecting property name ... column 2" (review 39, spec39a).
            raise UnicodeDecodeError("utf-8", b"\x00", 0, 1, "a NUL byte")
        doc = json.loads(
            text.removeprefix("\ufeff"),
            parse_float=_no_float,
            parse_constant=_no_constant,
            object_pairs_hook=pairs_hook,
        )
        if "\\u" in text and _SURROGATE_ESCAPE.search(text) and has_lone_surrogate(doc):
            raise InputError(
                f"{name}: not valid JSON (a lone UTF-16 surrogate, \\ud800 to \\udfff,"
                " is not a character)"
            )
        return doc
    except _ConstantInJson as exc:  # NaN, Infinity: Python's reader takes them, JSON has none
        raise InputError(f"{name}: not valid JSON ({exc})") from None
    except _FloatInJson as exc:  # said again with where the number is: one read more
        where = _float_path(text) if isinstance(text, str) else ""
        if not where:
            raise InputError(str(exc)) from None
        from .advice import MONEY_ADVICE, whole_number_advice

        said = str(exc).replace(MONEY_ADVICE, whole_number_advice(where, decimals=True))
        raise InputError(f"{where}: {said}") from None
    except UnicodeDecodeError:
        raise InputError(f"{name}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            # json's "Invalid control character at": its own "at" would read "at at line"
            f"{name}: not valid JSON ({exc.msg.removesuffix(' at')} at line {exc.lineno}"
            f" column {exc.colno})"
        ) from None
    except RecursionError:
        raise InputError(f"{name}: not valid JSON (nested too deeply)") from None
    except ValueError:  # Python's limit on an integer's digits (4,300)
        raise InputError(f"{name}: not valid JSON (a number with too many digits)") from None


def _too_large(name: str, limit: int) -> str:
    return f"{name}: the request is larger than {limit >> 20} MiB ({limit} bytes): refused"


# An escaped UTF-16 surrogate: half of a pair (an emoji written "\ud83d\ude00" is one
# character once read), or alone, which no UTF-8 text can hold: every answer, log line and
# SQLite text that echoed it would fail to encode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _FloatInJson(InputError):
    pass


def _float_path(text: str) -> str:
    """Where the first number with a point or an exponent is (`models.float_place`)."""
    from .models import float_place  # an error's path only: the CLI's start stays light

    return float_place(text)


def _no_float(text: str) -> Any:
    what = "is written with an exponent" if "e" in text.lower() else "has a decimal point"
    raise _FloatInJson(
        f"the number {text} {what}: write money in minor units (whole numbers) and"
        " quantities as decimal strings"
    )


class _ConstantInJson(InputError):
    pass


def _no_constant(text: str) -> Any:
    raise _ConstantInJson(f"{text} is not a JSON number")


def parse_time(text: str, name: str = "--at") -> Any:
    """A time given to a call (`balance --at`; gRPC's `at`, named so)."""
    from .models import _time_of_a_sale

    try:
        return _time_of_a_sale(text)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None


def json_document(data: Any) -> str:
    """The one JSON document `--json` prints and the HTTP interface answers, byte for byte."""
    return json.dumps(data, ensure_ascii=False) + "\n"


def camel_keys(value: Any) -> Any:
    """Every key of nested dicts in proto3 JSON's lowerCamelCase (`max_snapshot_mib` →
    `maxSnapshotMib`), as protoc names a field's JSON form."""
    if isinstance(value, dict):
        return {
            re.sub(r"_([a-z0-9])", lambda m: m[1].upper(), k): camel_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    return value


class OutputLost(TillpointError):
    """stdout did not take the answer (`> /dev/full`, a full disk, an I/O error): exit 1,
    worded as such, not as an internal error; what the command did stands."""


class OutputCut(BrokenPipeError):
    """A write to stdout's own descriptor broke (EPIPE): its reader left (`main` words
    it as the cut-off line whatever stdout polls, `_stdout_gone(sure=True)`)."""


def write_out(text: str) -> None:
    """Write `text` to stdout, now (a closed pipe is an `OutputCut`, `main` words it)."""
    if sys.stdout is None:  # `>&-`: it said "internal error: AttributeError"
        raise OutputLost(
            "the output could not be written: standard output is closed"
            " (what the command did stands)"
        )
    try:
        _write_whole(sys.stdout, text)
    except BrokenPipeError as exc:
        raise OutputCut(*exc.args) from None
    except OSError as exc:
        _stdout_to_devnull()
        raise OutputLost(
            f"the output could not be written: {exc.strerror or exc} (what the command did stands)"
        ) from None


def _write_whole(stream: Any, text: str) -> None:
    """Every byte of `text`, however often a signal interrupts the write. A signal handler
    that returns (the one-shot guard's, `_AfterAnswer`) while the write waits for a slow
    reader made CPython's buffered write give a short count, which its text layer drops:
    a SIGTERM then cut a 200 KB answer to the 64 KiB the pipe took, and the process
    exited 0 (review 38). Written to the file descriptor itself: a non-blocking stdout
    (O_NONBLOCK on a pipe the POS shares) that refuses more (EAGAIN) is waited for until
    its reader takes more (rev38b's loop tried again at once, a spin until the POS read:
    review 38's rev38f). A stream without a descriptor under it (a caller's StringIO)
    as is."""
    buffer = getattr(stream, "buffer", None)
    try:
        fd = buffer.fileno() if buffer is not None else None
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        fd = None
    if fd is None or buffer is None:
        stream.write(text)
        stream.flush()
        return
    stream.flush()  # what the text layer and the byte buffer hold goes first
    left = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    while left:
        try:
            written = os.write(fd, left)  # EINTR is retried (PEP 475); a short count too
        except BlockingIOError:
            _writable(fd)
            continue
        left = left[written:]


# How long a non-blocking stdout that refused a write is waited for before the write is
# tried again (`_writable`): a Unix socket its reader shut for reading never wakes poll.
WRITABLE_RECHECK_MS = 1000


def _writable(fd: int) -> None:
    """Until `fd` (a non-blocking stdout that refused a write) takes more, or fails, or a
    second has passed: the caller's write then tries again and says what it is. A Unix
    socket whose reader shut it for reading (`shutdown(SHUT_RD)`) is marked on the
    writer's side so that a write fails EPIPE, which poll does not report (neither
    POLLERR nor POLLHUP): a committed answer waiting here waited for ever, SIGTERM
    ignored by the guard (review 39, rev39b). One refused write a second while a reader
    is slow, no spin (rev38f)."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll(WRITABLE_RECHECK_MS)  # POLLERR/POLLHUP too: the next write says what it is


class Stdout:
    """stdout for what writes to a file object (`hub export` without --out): each write
    is `write_out`'s, so a stdout that does not take it is worded as `emit`'s is."""

    def write(self, text: str) -> int:
        write_out(text)
        return len(text)


def emit(args: argparse.Namespace, data: dict[str, Any], human: Callable[[Any], str]) -> int:
    after = getattr(args, "after", None)
    if after is not None:  # a committing call's answer, the call done: a stop ends it no more
        after.start()  # (before the write: a stop taken as the bytes leave killed it, -15)
    if getattr(args, "json", False):
        write_out(json_document(data))
    else:
        write_out(human(data) + "\n")
    return EXIT_OK


# ---------------------------------------------------------------- human-readable output


def _human_scan(routed: dict[str, Any]) -> str:
    if routed["kind"] == "COUPON":
        return f"COUPON {routed['code']} (offer {routed['offerId']})"
    return "CARD " + _human_card(routed["card"])


def _human_card(card: dict[str, Any]) -> str:
    if card["status"] == "FOUND":
        name = f"{card['firstName']} " if card.get("firstName") else ""  # a row may lack one
        return f"FOUND {name}(customer {card['customerId']}, tier {card['tier']})"
    if card.get("reason"):
        return f"{card['status']} ({card['reason']})"
    return str(card["status"])


def _human_result(r: dict[str, Any], printer: bool = True) -> str:
    """A result as text; `printer`: the till has a coupon printer (else the offers the
    commit picked are not printed: docs/CONTRACT.md §7, `[printer] kind = "none"`)."""
    from tillpoint.printer.text import format_money

    out = [f"receipt {r['receiptId']}  card {_human_card(r['card'])}  mode {r['mode']}"]
    if r.get("state"):
        out[0] += f"  {r['state']}"
        if r.get("holdExpiresAt"):
            out[0] += f" until {r['holdExpiresAt']}"
    for line in r["lines"]:
        offer = f"  offer {line['offerId']}" if line["offerId"] else ""
        out.append(
            f"  {line['sku']:<16} {format_money(line['amountMinor']):>12}"
            f"  −{format_money(line['discountMinor'])}{offer}"
            f"  paid by points {format_money(line['redeemedMinor'])}"
            f"  +{line['earnedPoints']} pts"
        )
    out.append(
        f"total {format_money(r['totalMinor'])}  discount {format_money(r['discountMinor'])}"
        f"  redeemed {r['redeemedPoints']} pts  to pay {format_money(r['payableMinor'])}"
        f"  earned {r['earnedPoints']} pts"
    )
    if r["balance"]:
        out.append(_human_balance(r["balance"]))
    if r["printedOffers"] and printer:
        # Committed with the receipt as a print job; the running agent prints it.
        out.append("offers queued for printing: " + ", ".join(r["printedOffers"]))
    elif r["printedOffers"]:
        out.append(
            "offers picked, not printed (no coupon printer configured): "
            + ", ".join(r["printedOffers"])
        )
    if r["heldOut"]:
        out.append("held out (control group): " + ", ".join(r["heldOut"]))
    if r.get("coupons"):  # each scanned code's verdict (§13), in the order scanned
        back = r.get("state") == "CANCELLED"  # a cancel gave the hold's codes back
        out.append("coupons: " + "; ".join(_human_coupon(v, back) for v in r["coupons"]))
    if r.get("trace"):
        out.extend(_human_trace(r["trace"]))
    return "\n".join(out)


def _human_coupon(verdict: dict[str, Any], given_back: bool = False) -> str:
    """A code's verdict in words: "SORRY7K2Q9 applied", "OLD1 rejected (EXPIRED)"; a code of
    blanks and dashes only (its normal form "") shows as "\"\"" (§13's decisions).
    `given_back`: a cancelled hold's result, whose applied codes the cancel gave back."""
    code = verdict["code"] or '""'
    if verdict["status"] == "APPLIED":
        return f"{code} given back" if given_back else f"{code} applied"
    return f"{code} rejected ({verdict['reason']})"


def _human_trace(t: dict[str, Any]) -> list[str]:
    from tillpoint.printer.text import format_money

    out = ["why:"]
    for line in t["lines"]:
        out.append(f"  line {line['index'] + 1} {line['sku']}")
        for o in line["offers"]:
            figure = f" −{format_money(o['discountMinor'])}" if o.get("discountMinor") else ""
            won = o.get("beatenByDiscountMinor")
            # a multiplier beaten by another (or by the birthday's) gives no money: no "(−0,00)"
            by = (
                f" by {o['beatenBy']}" + (f" (−{format_money(won)})" if won else "")
                if o.get("beatenBy")
                else ""
            )
            out.append(f"    {o['offerId']} {o['kind']}: {o['outcome']}{figure}{by}")
    for d in t.get("deals", []):  # a basket deal weighed against its lines' offers (§15)
        lines = ", ".join(str(i + 1) for i in d["lines"])
        out.append(
            f"  deal {d['offerId']}: {d['outcome']} −{format_money(d['discountMinor'])}"
            f" (line offers −{format_money(d['lineOffersMinor'])}; lines {lines})"
        )
    given = {o["offerId"]: o.get("discountMinor", 0) for o in t["receiptOffers"]}
    for o in t["receiptOffers"]:
        missing = o.get("missingMinor", 0)
        more = f", {format_money(missing)} more needed" if missing else ""
        # what it gives (or would give): a discount, or EXTRA_POINTS' points
        figure = f" −{format_money(o['discountMinor'])}" if o.get("discountMinor") else ""
        figure += f" +{o['points']} pts" if o.get("points") else ""
        won = given.get(o.get("beatenBy") or "", 0)
        by = (
            f" by {o['beatenBy']}" + (f" (−{format_money(won)})" if won else "")
            if o.get("beatenBy")
            else ""
        )
        out.append(
            f"  receipt offer {o['offerId']}: {o['outcome']}{figure}{by}"
            f" (from {format_money(o['minTotalMinor'])}{more})"
        )
    red = t["redemption"]
    caps = [f"{c['name'].lower()} {c['points']}" for c in red["caps"]]
    bound = f"bound by {red['boundBy'].lower() or 'nothing'}"  # an unknown card has no caps
    asked = red["requestedPoints"]
    out.append(
        f"  redemption: asked {'as much as allowed' if asked == -1 else asked},"
        f" allowed {red['allowedPoints']}"
        f" ({'; '.join(filter(None, [', '.join(caps), bound]))})"
    )
    return out


def _human_refund(r: dict[str, Any]) -> str:
    out = (
        f"refund {r['refundId']} of receipt {r['receiptId']}: {r['returnedPoints']} pts given"
        f" back, {r['takenBackPoints']} pts taken back"
    )
    if r["balance"]:
        out += "\n" + _human_balance(r["balance"])
    if r["negativeBalance"]:
        out += "\nthe balance is now below zero"
    return out


def _human_balance(b: dict[str, Any]) -> str:
    text = f"balance: {b['availablePoints']} pts available, {b['pendingPoints']} pending"
    expiring = b.get("expiring") or []  # §16: the next batches that expire
    if expiring:
        text += "; " + ", ".join(f"{e['points']} expire {e['expiresAt']}" for e in expiring)
    return text


# Where the packaged unit keeps the till's data (packaging/tillpoint.service).
SERVICE_DATA_DIR = Path("/var/lib/tillpoint")


def _not_served_note(data_dir: Path, status: dict[str, Any]) -> str:
    """The last line of a `status` read in this process when no `tillpoint run` serves
    the data directory ("" while one does, or a `reset` holds it): the mode, the devices
    and the last error are then what the stopped agent left, and said nothing of it.
    A directory no till has used (no snapshot, no sale, not enrolled: most often a
    support engineer's own default, `~/.local/share/tillpoint`, with no `sudo`) says so
    and where the packaged service keeps its data (review 39, ops39: the service looked
    down while it sold there)."""
    from .lock import DataDirLock

    if not DataDirLock(data_dir).unheld():  # held, or no telling: say nothing
        return ""
    if not (status.get("cacheVersion") or status.get("lastSeq") or status.get("enrolled")):
        where = (
            "`systemctl status tillpoint` says why"
            if data_dir == SERVICE_DATA_DIR
            else f"the packaged service's data directory is {SERVICE_DATA_DIR}:"
            " `sudo tillpoint status`"
        )
        return (
            f"\nagent: not running (no `tillpoint run` serves {data_dir}, and no till has"
            f" used it yet: no snapshot, no sale; {where})"
        )
    return (
        f"\nagent: not running (no `tillpoint run` serves {data_dir}: mode, devices and"
        " errors are as it last left them; `systemctl status tillpoint` says why)"
    )


def _human_status(s: dict[str, Any]) -> str:
    return "\n".join(
        f"{k}: {_renumbered(v) if k == 'lastRenumbered' and v else _human_value(v)}"
        for k, v in s.items()
    )


def _renumbered(last: dict[str, Any]) -> str:
    """Status's `lastRenumbered` for a person: "seq 2 → 5 (receipt r-5) at …"."""
    what = (
        f"refund {last.get('refundId')} of receipt {last.get('receiptId')}"
        if last.get("refundId")
        else f"receipt {last.get('receiptId')}"
    )
    return f"seq {last.get('oldSeq')} → {last.get('newSeq')} ({what}) at {last.get('at')}"


def _human_value(value: Any) -> str:
    """A status field for a person: nothing for an absent one, yes/no, JSON for the nested
    (they printed as Python's None, False and dict reprs)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
