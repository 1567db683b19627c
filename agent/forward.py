"""The CLI's short way: a call forwarded to the `tillpoint run` serving this data directory.

While `tillpoint run` serves, it writes ``serving.json`` in its data directory (the host
and port of its local HTTP interface, its pid, and a random instance id), mode 0600, and
removes it when it stops. `tillpoint quote|checkout|hold|confirm|cancel|refund|identify|
balance|status` then send the call to that agent over loopback HTTP (the same JSON the
CLI prints, docs/INTEGRATION.md) instead of opening the cache and the ledger in a
process of their own: one writer for the ledger, and a CLI process that imports neither
pydantic nor the pricing (0.5-0.7 s of imports before, docs/PERFORMANCE.md).

Safety (docs/DECISIONS.md, "The CLI forwards to the running agent"):
- every request carries the instance id; an agent that is not the one of this data
  directory answers 421 and runs nothing (a stale file, a port reused);
- not forwarded, and run locally as before: no file, a dead pid, no connection, a 421,
  an HTTP interface with a token, `--local` or TILLPOINT_CLI_LOCAL=1, and input the HTTP
  edge would word differently from the CLI (`balance --at`, empty or over-long texts);
- a call that commits (checkout, hold, confirm, cancel, refund) whose request was sent
  but whose answer did not come is never run again locally: exit 1 and one line saying
  to retry with the same receiptId (a refund: refundId; the agent's idempotency makes the
  retry safe);
- an error answer prints `tillpoint: <message>` and exits as the local run would
  (`errors.exit_code_of`: 2 for the refusals, 1 for the rest).

This module imports only the standard library and the project's stdlib-only modules
(errors, limits, paths) at its top: it is the CLI's fast path.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import exit_code_of
from .limits import TEXT_MAX, is_utf8_text
from .paths import default_data_dir

SERVING = "serving.json"
INSTANCE_HEADER = "X-Tillpoint-Instance"
MISDIRECTED = 421  # the answer of an agent whose instance id is another one
LOCAL_ENV = "TILLPOINT_CLI_LOCAL"
CONNECT_TIMEOUT_S = 1.0
# The HTTP edge answers UNAVAILABLE after its own 30 s (http_api.CALL_TIMEOUT_S).
ANSWER_TIMEOUT_S = 40.0
COMMITS = frozenset({"checkout", "hold", "confirm", "cancel", "refund"})


class NotForwarded(Exception):
    """Run the command locally instead (nothing was sent, or nothing was run)."""


class Unanswered(Exception):
    """A committing call was sent and its answer did not come: never run it again here."""


def _env(name: str) -> str | None:
    """A TILLPOINT_* variable as the configuration reads it: its name in any case, and of
    several names of it (`TILLPOINT_DATA_DIR` and `tillpoint_data_dir`) the last in the
    environment, as pydantic-settings takes it (the upper-case one was taken first: a
    command went to the `run` of another data directory than its own, rev38i)."""
    found = None
    for key, value in os.environ.items():
        if key.upper() == name:
            found = value
    return found


def _local_env() -> bool:
    """TILLPOINT_CLI_LOCAL read as the environment's booleans are (docs/CONTRACT.md §10):
    empty, `0`, `false`, `no` and `off` (any case) are false, as is its absence; anything
    else is true (`1`, `true`, `yes`, `on`). `false` ran the command here, as `1` does."""
    value = _env(LOCAL_ENV)
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def data_dir_of(args: Any) -> Path | None:
    """The data directory by the configuration's precedence (flag, TILLPOINT_DATA_DIR, the
    TOML file's data_dir, the default), without loading the configuration; None when the
    file cannot be read or the value is blank (the local run reports it)."""
    if getattr(args, "data_dir", None) is not None:
        return Path(args.data_dir)
    env = _env("TILLPOINT_DATA_DIR")
    if env is not None:
        # a blank one is refused by the configuration (the local run says so): it is not
        # the current directory, whose agent took the call (review 60, mut60b)
        return Path(env) if env.strip() else None
    config = getattr(args, "config", None)
    if config is None and os.environ.get("TILLPOINT_CONFIG"):
        config = Path(os.environ["TILLPOINT_CONFIG"])
    if config is not None:
        from .config import read_config_file
        from .errors import InputError

        try:
            values = read_config_file(Path(config))
        except InputError:
            return None
        # a top-level key is the field's whatever its case, the first such key as the
        # configuration reads it (`config._by_field_name`); `DATA_DIR` was not read (rev38i)
        value = next((v for k, v in values.items() if k.lower() == "data_dir"), None)
        if value is not None:
            return Path(value) if isinstance(value, str) and value.strip() else None
    return default_data_dir()


# ---------------------------------------------------------------- the serving agent's side


def publish(data_dir: Path, http_server: Any, *, token: bool) -> Callable[[], None]:
    """Write ``serving.json`` for the started HTTP interface; returns its remover."""
    import secrets

    instance = secrets.token_hex(16)
    http_server.api.instance = instance.encode()
    path = Path(data_dir) / SERVING
    doc = {
        "pid": os.getpid(),
        "host": http_server.host,
        "port": http_server.port,
        "instance": instance,
        "token": token,
    }
    tmp = path.with_name(f".{SERVING}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except OSError as exc:  # the agent serves all the same; CLI calls run locally
        import logging

        logging.getLogger("tillpoint.server").warning("cannot write %s: %s", path, exc)
        return lambda: None

    def remove() -> None:
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("instance") == instance:
                path.unlink()
        except (OSError, ValueError):
            pass

    return remove


def withdraw(data_dir: Path) -> None:
    """Remove a ``serving.json`` left by an agent that died (`tillpoint run` without HTTP)."""
    with contextlib.suppress(OSError):
        (Path(data_dir) / SERVING).unlink()


# ---------------------------------------------------------------- the CLI's side


def _serving(data_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((data_dir / SERVING).read_text(encoding="utf-8"))
        pid, host, port, instance = doc["pid"], doc["host"], doc["port"], doc["instance"]
    except (OSError, ValueError, KeyError, TypeError):
        raise NotForwarded from None
    if doc.get("token") or not isinstance(pid, int) or not isinstance(port, int):
        raise NotForwarded
    if not isinstance(host, str) or not isinstance(instance, str):
        raise NotForwarded
    if not process_running(pid):
        raise NotForwarded
    return dict(doc)


def process_running(pid: int) -> bool:
    """Whether process `pid` is running (another user's too: signal 0 is refused, not
    unknown)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _text_ok(*values: str | None) -> bool:
    """A text the HTTP edge passes as the CLI does (its own refusals are worded apart: a
    text that is not UTF-8, a command line's other bytes, is refused here, exit 2)."""
    return all(v is None or (v.strip() and len(v) <= TEXT_MAX and is_utf8_text(v)) for v in values)


def _keep_stdin(args: Any) -> Callable[[], None]:
    """For an input file `-`: read standard input once (as much as `read_json` reads) and
    return what puts it back, so that a local run after all reads the same bytes."""
    if getattr(args, "file", None) != "-":
        return lambda: None
    import io

    from .cli import standard_input
    from .limits import REQUEST_MAX_BYTES

    stdin: Any = standard_input()  # a closed one: bad input, as a local run says
    got = stdin.read(REQUEST_MAX_BYTES + 1)
    raw = got.encode("utf-8") if isinstance(got, str) else got

    def put_back() -> None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8")

    put_back()
    return put_back


def _request(args: Any) -> tuple[str, str, bytes | None]:
    """(method, path, body) of the command; NotForwarded when it runs locally."""
    from .cli import read_json

    command = args.command
    if command in ("quote", "checkout", "hold", "refund"):
        doc = read_json(args.file)  # the same reading and the same errors as locally
        if getattr(args, "explain", False) and isinstance(doc, dict):
            doc = {**doc, "explain": True}
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        return "POST", f"/v1/{command}", body
    if command == "identify" and _text_ok(args.text):
        return "POST", "/v1/identify", _json({"text": args.text})
    if command == "balance" and args.at is None and _text_ok(args.card):
        return "POST", "/v1/balance", _json({"card": args.card})
    if command == "confirm" and args.receipt_id.strip() and _text_ok(args.receipt_id, args.fiscal):
        fields: dict[str, str] = {"receiptId": args.receipt_id}
        if args.fiscal is not None:
            fields["fiscalDocument"] = args.fiscal
        return "POST", "/v1/confirm", _json(fields)
    if command == "cancel" and _text_ok(args.receipt_id):
        return "POST", "/v1/cancel", _json({"receiptId": args.receipt_id})
    if command == "status":
        return "GET", "/v1/status", None
    raise NotForwarded


def _json(doc: dict[str, str]) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def _exchange(
    serving: dict[str, Any], method: str, path: str, body: bytes | None, commits: bool
) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange on loopback, `Connection: close`: (status, body). Written
    on a socket here: `http.client` imports `email` and `ssl`, a third of this path."""
    try:
        sock = socket.create_connection(
            (serving["host"], serving["port"]), timeout=CONNECT_TIMEOUT_S
        )
    except OSError:
        raise NotForwarded from None  # nothing sent: run it here
    payload = body or b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {serving['host']}:{serving['port']}\r\n"
        f"{INSTANCE_HEADER}: {serving['instance']}\r\nConnection: close\r\n"
        + (
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            if body is not None
            else ""
        )
        + "\r\n"
    ).encode("latin-1")
    with sock:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(ANSWER_TIMEOUT_S)
            sock.sendall(head + payload)
        except OSError:
            # Not all of it left: the agent runs a call only once its whole body is in.
            raise NotForwarded from None
        try:
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
            return _parse_response(b"".join(chunks))
        except (OSError, ValueError) as exc:
            if commits:
                raise Unanswered(str(exc) or type(exc).__name__) from None
            raise NotForwarded from None  # nothing was stored: run it here


def _parse_response(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of a whole HTTP/1.1 answer; ValueError when it is cut or malformed."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("the answer was cut short")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {lines[0][:40]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) < length:
            raise ValueError("the answer was cut short")
        body = body[:length]
    return int(parts[1]), body


def _unchunk(data: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            raise ValueError("the answer was cut short")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        if len(data) < size + 2:
            raise ValueError("the answer was cut short")
        out.append(data[:size])
        data = data[size + 2 :]


def forward(args: Any) -> int:
    """Run the command on the agent serving its data directory and print its answer as
    the local run would; NotForwarded to run it locally."""
    if getattr(args, "local", False) or _local_env():
        raise NotForwarded
    data_dir = data_dir_of(args)
    if data_dir is None:
        raise NotForwarded
    serving = _serving(data_dir)
    from .privileges import run_as_owner

    run_as_owner(data_dir)  # as root: the owner's, as a local run would
    replay = _keep_stdin(args)
    try:
        method, path, body = _request(args)
        commits = args.command in COMMITS
        status, raw = _exchange(serving, method, path, body, commits)
        if status == MISDIRECTED:
            raise NotForwarded  # another agent than this data directory's: nothing ran
    except NotForwarded:
        replay()  # the local run reads the same standard input
        raise
    except Unanswered as exc:
        # a refund is idempotent on its refundId (its receiptId is the sale's): a script
        # told "the same receiptId" for a refund could send it again under a new refundId
        key = "refundId" if args.command == "refund" else "receiptId"
        print(
            f"tillpoint: the running agent did not answer ({exc}): retry with the same {key}",
            file=sys.stderr,
        )
        return 1
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError:
        doc = None
    if status == 200 and isinstance(doc, dict):
        return _print(args, doc, serving)
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        print(f"tillpoint: the running agent answered HTTP {status}", file=sys.stderr)
        return 1
    print(f"tillpoint: {error.get('message', '')}", file=sys.stderr)
    return exit_code_of(str(error.get("code")))


def _print(args: Any, doc: dict[str, Any], serving: dict[str, Any] | None = None) -> int:
    """The answer as `emit` prints a local one (the agent sent `json_document` of it)."""
    from . import cli

    human: dict[str, Callable[[Any], str]] = {
        "identify": cli._human_card,
        "balance": cli._human_balance,
        "status": cli._human_status,
        "refund": cli._human_refund,
    }
    result = human.get(args.command, cli._human_result)
    text = not getattr(args, "json", False)
    if result is cli._human_result and doc.get("printedOffers") and text:
        # The text says whether the offers print: the running agent's printer decides.
        printer = _printer_state(serving) != "DISABLED"
        return cli.emit(args, doc, lambda r: cli._human_result(r, printer=printer))
    return cli.emit(args, doc, result)


def _printer_state(serving: dict[str, Any] | None) -> str | None:
    """The serving agent's `printerState`; None when it does not say."""
    if serving is None:
        return None
    try:
        status, raw = _exchange(serving, "GET", "/v1/status", None, False)
        state = json.loads(raw.decode("utf-8")).get("printerState") if status == 200 else None
    except (NotForwarded, ValueError, AttributeError):
        return None
    return state if isinstance(state, str) else None
