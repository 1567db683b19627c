"""A small typed Python client for the till's `PosAgent` gRPC service (the `tillpoint.client`).

Requests and answers are the proto3 JSON documents of docs/CONTRACT.md (lowerCamelCase
keys, enums as strings), the same shapes the CLI reads and prints with `--json`; int64
fields come back as Python ints and every field is present (zeros, empty lists), as
gRPC has it: a quote's `deviceId` "", `seq` 0 and `state` "RECEIPT_STATE_UNSPECIFIED",
where the CLI leaves them out, and an optional field left unset (a line's `offerId`
without an offer, an UNKNOWN card's `balance`) is absent where the CLI writes null: read
those with `.get()` (docs/INTEGRATION.md, "gRPC and JSON"). Every call has an explicit
deadline. A call that fails with `UNAVAILABLE` (the agent is restarting, nothing listens
yet) or `DEADLINE_EXCEEDED` (no answer in time) is sent again, the same request with the
same `receiptId` or `refundId`, after a growing delay with jitter: the agent is idempotent
on those ids, so a checkout that did commit before the answer was lost returns the stored
result and nothing is counted twice. With the defaults the retries wait 3.55-7.1 s in all:
the shipped unit starts a stopped agent again after 2 s (`RestartSec=2s`), and with the
4 attempts before review 59 (0.35-0.7 s) a POS's call gave up before it listened. Other
errors are not retried and raise `ClientError` with the gRPC status and the agent's
one-line message.

    from tillpoint.agent.client import PosAgentClient

    with PosAgentClient("127.0.0.1:50061") as till:
        card = till.identify("2770000000017")
        result = till.checkout(receipt)        # a dict: result["payableMinor"], ...

`hold`, `confirm` and `cancel` call the receipt-life RPCs of docs/CONTRACT.md §11 when the
agent's `tillpoint.v1` has them (`ClientError` with `UNIMPLEMENTED` otherwise).
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .wire import message_from_json, reply_json

__all__ = ["DEFAULT_ADDRESS", "RETRYABLE", "ClientError", "PosAgentClient"]

DEFAULT_ADDRESS = "127.0.0.1:50061"
SERVICE = "PosAgent"
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# 8 attempts: 7 retries whose waits (0.1 s·2ⁿ capped at 2 s, each drawn from [d/2, d]) add
# up to 3.55-7.1 s, so a call outlives an agent started again by its unit (RestartSec=2s,
# then its start); an agent that answers nothing costs 8 deadlines and those waits.
DEFAULT_ATTEMPTS = 8
JsonDict = dict[str, Any]

# gRPC's own retries are off (ours resend the same request), and a channel that failed to
# connect tries again within 0.1-1 s rather than gRPC's default 1-120 s, so a retry a
# moment after the agent came back reaches it instead of failing fast on the old failure.
CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)
# gRPC's largest channel argument (a C int of milliseconds: 24.8 days)
_MAX_MS = 2**31 - 1


def channel_options(connect_s: float) -> tuple[tuple[str, int], ...]:
    """`CHANNEL_OPTIONS` with a connection attempt given `connect_s` (the client's
    `timeout`) for its TCP connect and the agent's HTTP/2 SETTINGS frame.

    gRPC core gives an attempt max(`grpc.min_reconnect_backoff_ms`, the reconnect
    backoff): that option was 100 ms beside the backoff's, and a busy till whose agent
    answered a new connection later failed the call UNAVAILABLE "timed out before
    receiving SETTINGS frame" after 0.11 s, whatever its deadline (review 41, grpc41).
    A refused connection (nothing listens) still fails at once; one nobody answers is
    given up with the call's deadline, so a retry connects anew."""
    window_ms = max(100, min(_MAX_MS, math.ceil(connect_s * 1000)))
    return (*CHANNEL_OPTIONS, ("grpc.min_reconnect_backoff_ms", window_ms))


def _check_timeout(timeout: float) -> None:
    """A deadline is a positive, finite number of seconds: NaN and infinity made every
    call fail DEADLINE_EXCEEDED at once (and be retried as a lost answer)."""
    try:
        ok = timeout > 0 and math.isfinite(timeout)
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise ValueError("timeout must be a positive number of seconds")


CLOSED = "the gRPC channel is closed"
# A token gRPC metadata can carry: printable ASCII. grpcio refuses a control character or a
# letter beyond ASCII in metadata at every call, INTERNAL "Invalid metadata", which a POS
# reads as a bug in tillpoint (review 60, mut60b): a token read from a file with its
# newline failed every call so. Blanks and line ends around it are no part of it, as the
# agent reads the header (`config.bearer_matches`). One the agent's `[server] token` cannot
# be (`config.Token`: no blank inside, at most 512) is sent as before, not refused: an
# agent without a token takes the call whatever it carries, and one with a token answers
# UNAUTHENTICATED; refusing it broke a POS that worked (review 60, rev60).
_TOKEN = re.compile(r"[ -~]*")
_AROUND = " \t\r\n"
TOKEN_RULE = (
    "token must be printable ASCII: gRPC metadata carries no control character"
    " and no letter beyond ASCII"
)


def _closed(channel: grpc.Channel) -> bool:
    """Whether `channel` was closed (grpcio's channel says so when asked its state,
    without connecting); a channel of another kind is taken as open."""
    check = getattr(getattr(channel, "_channel", None), "check_connectivity_state", None)
    if check is None:
        return False
    try:
        check(False)
    except ValueError:  # "Cannot invoke RPC: Channel closed!"
        return True
    return False


class ClientError(Exception):
    """A call the agent refused or that could not be made; `code` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str, attempts: int = 1) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.attempts = attempts


class PosAgentClient:
    """The `PosAgent` calls as methods taking and returning proto3 JSON dicts.

    `timeout` is the deadline of one attempt in seconds, and what a new connection is
    given for the agent's handshake (a longer per-call `timeout` does not lengthen that);
    `attempts` is how many times a retryable failure is tried in all; the n-th retry waits
    a random time between half and all of min(`backoff_cap`, `backoff` × 2ⁿ⁻¹) seconds
    (the defaults: 0.1, 0.2, 0.4, 0.8, 1.6, 2, 2).
    `token`: the agent's `[server] token`, sent with every call ("" or None: none; blanks
    and line ends around it dropped, a file's newline; one gRPC cannot send, with a
    control character inside or a letter beyond ASCII, is refused: ValueError).
    `channel`: one of the caller's to use instead of the client's own (left open by
    `close`); a closed one is refused (ValueError), and a call after its owner closed it
    is a `ClientError` CANCELLED.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float = 2.0,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = 0.1,
        backoff_cap: float = 2.0,
        channel: grpc.Channel | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        token: str | None = "",
    ) -> None:
        _check_timeout(timeout)
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if backoff <= 0 or backoff_cap < backoff:
            raise ValueError("need 0 < backoff <= backoff_cap")
        # None is no token, as it was until review 60: `token=os.environ.get("…")` unset
        token = (token or "").strip(_AROUND)
        if not _TOKEN.fullmatch(token):
            raise ValueError(TOKEN_RULE)
        self.address = address
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        if channel is not None and _closed(channel):
            # grpcio's generated stub registers its methods on the closed channel's freed
            # core channel: the process died with SIGSEGV (review 41)
            raise ValueError(CLOSED)
        self._own_channel = channel is None
        self._channel = (
            channel
            if channel is not None
            else grpc.insecure_channel(address, channel_options(timeout))
        )
        self._stub = pb_grpc.PosAgentStub(self._channel)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.retries = 0  # retries made over the client's life (for logs and tests)
        # the agent's `[server] token`, when it has one (required beyond loopback)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    # ------------------------------------------------------------ the calls

    def identify(self, text: str, *, timeout: float | None = None) -> JsonDict:
        """The card outcome (`status`, and for FOUND `customerId`, `tier`, `firstName`)."""
        return self.call("Identify", {"text": text}, timeout=timeout)

    def quote(self, receipt: Mapping[str, Any], *, timeout: float | None = None) -> JsonDict:
        """Prices a receipt without storing anything (`CheckoutResult`)."""
        return self.call("Quote", receipt, timeout=timeout)

    def checkout(self, receipt: Mapping[str, Any], *, timeout: float | None = None) -> JsonDict:
        """Commits a receipt, idempotent on `receiptId` (`CheckoutResult`)."""
        return self.call("Checkout", receipt, timeout=timeout)

    def refund(self, refund: Mapping[str, Any], *, timeout: float | None = None) -> JsonDict:
        """Commits a refund, idempotent on `refundId` (`RefundResult`)."""
        return self.call("Refund", refund, timeout=timeout)

    def balance(
        self, card: str, at: str | None = None, *, timeout: float | None = None
    ) -> JsonDict:
        """Available and pending points at `at` (RFC 3339; default now)."""
        request: JsonDict = {"card": card}
        if at is not None:
            request["at"] = at
        return self.call("Balance", request, timeout=timeout)

    def status(self, *, timeout: float | None = None) -> JsonDict:
        """Cache version, outbox depth, last sync, printer and display state."""
        return self.call("Status", {}, timeout=timeout)

    def hold(self, receipt: Mapping[str, Any], *, timeout: float | None = None) -> JsonDict:
        """Prices and reserves a receipt (docs/CONTRACT.md §11); the held `CheckoutResult`."""
        return self.call("Hold", receipt, timeout=timeout)

    def confirm(
        self,
        receipt_id: str,
        fiscal_document: str | None = None,
        *,
        timeout: float | None = None,
    ) -> JsonDict:
        """Commits a held receipt exactly as held (docs/CONTRACT.md §11)."""
        request: JsonDict = {"receiptId": receipt_id}
        if fiscal_document is not None:
            request["fiscalDocument"] = fiscal_document
        return self.call("Confirm", request, timeout=timeout)

    def cancel(self, receipt_id: str, *, timeout: float | None = None) -> JsonDict:
        """Releases a hold (docs/CONTRACT.md §11)."""
        return self.call("Cancel", {"receiptId": receipt_id}, timeout=timeout)

    # ------------------------------------------------------------ the machinery

    def call(
        self, method: str, request: Mapping[str, Any], *, timeout: float | None = None
    ) -> JsonDict:
        """Any `PosAgent` RPC by name, with a proto3 JSON request; retried as described."""
        rpc = getattr(self._stub, method, None)
        descriptor = pb.DESCRIPTOR.services_by_name[SERVICE].methods_by_name.get(method)
        if rpc is None or descriptor is None:
            raise ClientError(
                grpc.StatusCode.UNIMPLEMENTED, f"this tillpoint.v1 has no PosAgent.{method}"
            )
        message = _message(descriptor.input_type, request)
        deadline = self.timeout if timeout is None else timeout
        _check_timeout(deadline)
        attempt = 0
        while True:
            attempt += 1
            try:
                answer: Message = rpc(message, timeout=deadline, metadata=self._metadata)
            except ValueError:  # grpcio's "Cannot invoke RPC on closed channel!"
                if not _closed(self._channel):
                    raise
                raise ClientError(grpc.StatusCode.CANCELLED, CLOSED, attempt) from None
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                details = exc.details() if callable(getattr(exc, "details", None)) else None
                status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
                text = str(details or status.name.lower())
                if status not in RETRYABLE or attempt >= self.attempts:
                    raise ClientError(status, text, attempt) from None
                self.retries += 1
                self._sleep(self._delay(attempt))
                continue
            return to_json(answer)

    def _delay(self, attempt: int) -> float:
        ceiling = min(self.backoff_cap, self.backoff * 2 ** (attempt - 1))
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> PosAgentClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _message(descriptor: Any, data: Mapping[str, Any]) -> Message:
    """The request message from its proto3 JSON; bad JSON is refused before any call."""
    try:
        return message_from_json(descriptor, data)
    except json_format.ParseError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "not valid"
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, f"{descriptor.name}: {first}") from None


def to_json(message: Message) -> JsonDict:
    """The proto3 JSON of `message` with every field present and int64 values as ints."""
    return reply_json(message)
