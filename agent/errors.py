"""One rooted error hierarchy for tillpoint, and the one table of what each edge answers.

    TillpointError                exit 1  INTERNAL
    ├── InputError                exit 2  INVALID_ARGUMENT     malformed or out-of-range input
    │   ├── SnapshotRefused       exit 2  FAILED_PRECONDITION  wrong base, older, bad signature
    │   │   └── SnapshotCorrupted exit 2  FAILED_PRECONDITION  bytes not the bundle declared
    │   ├── UnreadableFile        exit 2  INVALID_ARGUMENT     a file named to read: missing, I/O
    │   └── InvalidCard           exit 2  INVALID_ARGUMENT     an INVALID card (§4): malformed
    ├── Refused                   exit 2  FAILED_PRECONDITION  valid input the rules refuse
    │   ├── CardRefused           exit 2  FAILED_PRECONDITION  BLOCKED or LOST card
    │   ├── NoSnapshot            exit 2  FAILED_PRECONDITION  no snapshot loaded: no pricing
    │   └── NotFound              exit 2  NOT_FOUND            a receipt never committed here
    ├── Conflict                  exit 2  ALREADY_EXISTS       a known receiptId with another body
    ├── StorageError              exit 1  UNAVAILABLE          disk full, database locked
    │   ├── LaterRelease          exit 2  FAILED_PRECONDITION  data a later release migrated
    │   ├── DamagedCache          exit 1  UNAVAILABLE          a damaged cache.db (run: exit 2)
    │   ├── DamagedLedger         exit 1  UNAVAILABLE          a damaged ledger.db (run: exit 2)
    │   ├── ReadOnlyData          exit 2  FAILED_PRECONDITION  a data directory it may not write
    │   └── ForeignDatabase       exit 2  FAILED_PRECONDITION  another program's SQLite file
    └── HubUnavailable            exit 1  UNAVAILABLE          the hub did not answer in time

Every message is one line a cashier or a support engineer can act on; nothing below the
edge prints tracebacks. Refusals leave the cache and the ledger exactly as they were.

Each class carries its exit code and its code (a gRPC status name); `HTTP_STATUS` gives
the HTTP status of each code. The three edges (agent/cli.py, agent/server.py,
agent/http_api.py) answer an error through `edge_of`, never a table of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The HTTP status of each code; the codes without an error class are the HTTP edge's own
# refusals (authentication, method, timeouts, size).
HTTP_STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "REQUEST_TIMEOUT": 408,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 412,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "HTTP_VERSION_NOT_SUPPORTED": 505,
}


class TillpointError(Exception):
    """Base of every error tillpoint raises on purpose."""

    exit_code = 1
    grpc_code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(TillpointError):
    exit_code = 2
    grpc_code = "INVALID_ARGUMENT"


class SnapshotRefused(InputError):
    grpc_code = "FAILED_PRECONDITION"


class SnapshotCorrupted(SnapshotRefused):
    """The bytes received are not the bundle the hub declared (truncated, longer, another
    checksum): the transfer, not the bundle, so a pull does not remember it as refused
    (the same version may arrive whole next time, or from a rebuilt file)."""


class UnreadableFile(InputError):
    """The file itself, not its content: a sync pull retries it (EMFILE, EIO), where a
    bundle whose content is refused is recorded and not fetched again."""


class InvalidCard(InputError):
    """A card whose text is INVALID (§4: a wrong check digit, empty, letters or other
    signs, a `+` number that is not a Russian phone), in a quote, hold, checkout or
    balance: malformed input, 400 / INVALID_ARGUMENT (until review 34 it was a refusal,
    412 / FAILED_PRECONDITION, as a blocked card is). The message is the cashier's, "card
    not accepted: <identify's reason>"."""


class Refused(TillpointError):
    exit_code = 2
    grpc_code = "FAILED_PRECONDITION"


class CardRefused(Refused):
    """A BLOCKED card (§4: its status BLOCKED or LOST, or a phone whose customer has no
    active card): valid input the rules refuse; the POS sells without loyalty."""


class NoSnapshot(Refused):
    """Quote, hold and checkout on a till whose cache holds no snapshot yet."""


class NotFound(Refused):
    grpc_code = "NOT_FOUND"


class Conflict(TillpointError):
    """An id already stored with a different request (an idempotency key reused)."""

    exit_code = 2
    grpc_code = "ALREADY_EXISTS"


class StorageError(TillpointError):
    grpc_code = "UNAVAILABLE"


class LaterRelease(StorageError):
    """A data directory (or a hub's store) a later release migrated: a downgrade. No
    restart or retry helps, so exit 2, which the systemd units do not restart in a loop
    (`RestartPreventExitStatus=2`): the journal says what to do."""

    exit_code = 2
    grpc_code = "FAILED_PRECONDITION"


class DamagedCache(StorageError):
    """A cache file SQLite finds damaged (`db.damaged_cache`): UNAVAILABLE (503) to a call,
    exit 1 to a command, and exit 2 to `run` at start (`app.run`): a restart cannot mend
    it (the unit restarted `run` every 2 s for ever), deleting the cache and loading a
    snapshot does, and the message says so."""


class DamagedLedger(StorageError):
    """A ledger file SQLite finds damaged when it is opened (`ledger.open_ledger`): it holds
    the till's sales, so the message says to keep a copy and check it; exit 2 to `run` at
    start, as for `DamagedCache`."""


class ReadOnlyData(StorageError):
    """A data directory (or a file in it) this process may not write: a file system
    remounted read-only, a mode, another user's. An administrator's to mend, as a later
    release's data is: exit 2 (the unit does not restart it) and FAILED_PRECONDITION (412)
    to a call, so that a CLI forwarded to `run` exits as a local one does."""

    exit_code = 2
    grpc_code = "FAILED_PRECONDITION"


class ForeignDatabase(StorageError):
    """A file where tillpoint keeps its own database (`ledger.db`, `cache.db`, the hub's
    `hub.db`) that is another program's SQLite database: tables, none of tillpoint's schema
    steps. A wrong path, an operator's to mend, as a data directory that is a file: exit 2,
    FAILED_PRECONDITION, and that program's file left as it was (review 37: tillpoint wrote
    its own tables into it, and `snapshot load` replaced such a `cache.db`)."""

    exit_code = 2
    grpc_code = "FAILED_PRECONDITION"


class HubUnavailable(TillpointError):
    grpc_code = "UNAVAILABLE"


@dataclass(frozen=True)
class Edge:
    """What every edge answers for one error: the CLI's exit code, the gRPC status code's
    name (also the `code` of an HTTP error body), the HTTP status, the one-line message."""

    exit_code: int
    code: str
    http_status: int
    message: str


def edge_of(exc: TillpointError) -> Edge:
    return Edge(
        exc.exit_code, exc.grpc_code, HTTP_STATUS.get(exc.grpc_code, 500), one_line(exc.message)
    )


# What a message may not carry as it is: control characters (a line break would start a
# false log line or break the POS's one-line display), Unicode's line separators, and
# lone surrogates (no UTF-8 text holds one). Each is written as its escape instead.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
MESSAGE_MAX = 1000  # characters; a message echoing a megabyte of input keeps both ends


def one_line(message: str) -> str:
    """The message as one line of at most about MESSAGE_MAX characters: messages echo
    what was sent (an id, a field's name, a value), and what was sent can be anything."""
    if _UNSAFE.search(message):
        message = _UNSAFE.sub(_escape, message)
    if len(message) > MESSAGE_MAX:
        half = MESSAGE_MAX // 2 - 20  # room for the marker: the result is within the max
        cut = len(message) - 2 * half
        message = f"{message[:half]} …[{cut} characters]… {message[-half:]}"
    return message


def _escape(found: re.Match[str]) -> str:
    return found[0].encode("unicode_escape").decode("ascii")


def exit_code_of(code: str) -> int:
    """The CLI's exit code for an error an edge answered with `code` (the forwarded CLI
    reads the agent's HTTP answer): the classes' own table read backwards."""
    pending: list[type[TillpointError]] = [TillpointError]
    while pending:
        cls = pending.pop()
        if cls.grpc_code == code:
            return cls.exit_code
        pending.extend(cls.__subclasses__())
    return TillpointError.exit_code
