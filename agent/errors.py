"""One rooted error hierarchy for tillpoint, mapped to exit codes and gRPC codes at the edges.

    TillpointError                exit 1  INTERNAL
    ├── InputError                exit 2  INVALID_ARGUMENT     malformed or out-of-range input
    │   └── SnapshotRefused       exit 2  FAILED_PRECONDITION  wrong base, older, bad signature
    ├── Refused                   exit 2  FAILED_PRECONDITION  valid input the rules refuse
    │   ├── CardRefused           exit 2  FAILED_PRECONDITION  BLOCKED or INVALID card
    │   ├── NoSnapshot            exit 2  FAILED_PRECONDITION  no snapshot loaded: no pricing
    │   └── NotFound              exit 2  NOT_FOUND            a receipt never committed here
    ├── Conflict                  exit 2  ALREADY_EXISTS       a known receiptId with another body
    ├── StorageError              exit 1  UNAVAILABLE          disk full, database locked
    └── HubUnavailable            exit 1  UNAVAILABLE          the hub did not answer in time

Every message is one line a cashier or a support engineer can act on; nothing below the
edge prints tracebacks. Refusals leave the cache and the ledger exactly as they were.
"""

from __future__ import annotations


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


class Refused(TillpointError):
    exit_code = 2
    grpc_code = "FAILED_PRECONDITION"


class CardRefused(Refused):
    pass


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


class HubUnavailable(TillpointError):
    grpc_code = "UNAVAILABLE"
