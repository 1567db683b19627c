"""The local HTTP/JSON interface (docs/CONTRACT.md §12): the `PosAgent` calls for POS
programs that speak HTTP and JSON rather than gRPC.

Starlette on uvicorn (h11), in its own thread and event loop beside the gRPC server, over
the same `Agent`. Reads with a small body (quote, identify, balance: CPU work of a few
milliseconds that never waits for a commit) run on the loop itself; every other call, and
any body over `ON_LOOP_MAX_BYTES`, runs on a small thread pool (docs/DECISIONS.md, "The
HTTP interface's reads on its event loop"). Bodies in are
read like the CLI's input files (`cli.parse_json`: no floats); answers are the document
`--json` prints (`cli.json_document`), byte for byte. Errors are
`{"error": {"code": ..., "message": ...}}` with the status of `HTTP_STATUS`.

The POST calls are answered on bare ASGI in `Api.__call__` (no Starlette Request, Response
or routing: the same limits, timeouts, errors and headers); a receipt is validated
straight from the body's bytes when that reads it as the long way does
(`receipt_of_body`), and a result is answered as `results.json_text`, the CLI's text
written without a dict per line (docs/DECISIONS.md, "The HTTP interface's own overhead").
Starlette routes the rest: the GET calls, 404 and 405.

`GET /openapi.json` is generated from the proto descriptors of `PosAgent` (the same
messages the gRPC server speaks and the proto3 JSON of the bodies), its descriptions from
the comments of the `.proto` the package ships, its examples from the file
`make openapi-examples` generates (agent/openapi_examples.py), never written by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import functools
import hmac
import logging
import re
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h11
import uvicorn
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic.alias_generators import to_snake
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from tillpoint.v1 import tillpoint_pb2 as pb
from uvicorn.protocols.http import h11_impl

from .cli import json_document, parse_json, parse_time
from .config import (
    bearer_matches,
    bind_listeners,
    listen_text,
    not_resolved,
    shorten,
    split_listen,
    token_problem,
)
from .errors import HTTP_STATUS, InputError, TillpointError, edge_of, one_line
from .limits import INT64_MAX, INT64_MIN, TEXT_MAX
from .models import Receipt, _time_of_a_sale
from .results import CheckoutResult, json_text
from .service import MAX_FISCAL_DOCUMENT, Agent
from .wire import json_of, receipt_from_json, refund_from_json, status_json

log = logging.getLogger("tillpoint.http")

MAX_BODY_BYTES = 4 << 20  # a larger request is bad input: 400 (docs/CONTRACT.md §10, §12)
BODY_TIMEOUT_S = 10.0  # a body that takes longer to arrive gets 408
# A refused over-large body of a request whose connection closes after the answer is read
# to its end (up to this much, within BODY_TIMEOUT_S) before the 400 goes out: closing with
# the body unread makes the kernel reset the connection, and a client still writing its
# body (urllib, a POS script) gets "connection reset" instead of the answer.
DRAIN_MAX_BYTES = 64 << 20
DRAIN_IDLE_S = 1.0  # ... and while bytes of it keep coming: a second without any ends it
# Set on uvicorn's request cycle (its `receive`'s object) when the client ends its side of
# the connection before the request's body is whole: `_read_body` answers the 408 at once.
CUT = "tillpoint_body_cut"
MAX_HEAD_BYTES = 16 << 10  # a request head larger than this is answered 400 (h11's default)
HEAD_TIMEOUT_S = 10.0  # a connection without a whole request head this long is closed
CALL_TIMEOUT_S = 30.0  # an agent call still running then answers 503 (retry, same id)
KEEP_ALIVE_S = 75  # idle keep-alive connections are closed after this
# An answer whose bytes the client does not take for this long (it stopped reading: its
# socket's buffers are full) ends the connection: the write waited for ever, the
# connection counted among `MAX_CONNECTIONS` (review 38)
ANSWER_TIMEOUT_S = 10.0
# ... looked at this many times in that time: the reset comes `ANSWER_TIMEOUT_S` to a tenth
# more after the kernel last took a byte (review 40, rev40a: a look each 10 s reset 20 s on)
ANSWER_LOOKS = 10
MAX_CONNECTIONS = 256  # open at once; a connection accepted past them is answered 503
GRACE_S = 5  # in-flight requests get this long at shutdown
BACKLOG = 128  # connections the kernel queues before the interface accepts them
# A read's body up to this size is parsed, run and encoded on the event loop: no hop to the
# pool and back (two thread wake-ups and GIL hand-offs, ≈ 10 % of a 50-line quote's time
# over HTTP). A 200-line receipt is ≈ 16 KB; larger bodies go to the pool.
ON_LOOP_MAX_BYTES = 64 << 10

JSON = "application/json"
_HEAD = (b"content-type", JSON.encode())  # after content-length, as Starlette's Response
_CLOSE = (b"connection", b"close")


class HttpError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_body(code: str, message: str) -> tuple[int, bytes]:
    """An error's status and body: `{"error": {"code": ..., "message": ...}}`."""
    body = json_document({"error": {"code": code, "message": one_line(message)}})
    return HTTP_STATUS.get(code, 500), body.encode()


def error_response(code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    status, body = error_body(code, message)
    return Response(body, status, headers=headers, media_type=JSON)


def page_refused(origin: bytes) -> Response:
    """A web page's request from an origin not in `[http] allowed_origins`: 403."""
    return error_response(
        "PERMISSION_DENIED",
        f"requests from web pages are refused (Origin: {_shown(origin)}):"
        " list the page's origin in [http] allowed_origins",
    )


def _shown(value: bytes, limit: int = 100) -> str:
    """A header's value as text in a message: UTF-8 (other bytes as \\xNN), cut with an
    ellipsis past `limit` characters (`error_body`'s `one_line` escapes its controls)."""
    return shorten(value.decode("utf-8", "backslashreplace"), limit)


# ---------------------------------------------------------------- the calls


def _fields(
    body: Any, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, str]:
    """The small request objects ({"text"}, {"card", "at"}, {"receiptId"}...): strings only.
    A field may be named as proto3 JSON readers accept it: lowerCamelCase or the proto
    field's own name (`receipt_id`), as the receipts' and refunds' fields may."""
    if not isinstance(body, dict):
        raise InputError(f"{what}: expected a JSON object")
    known = (*required, *optional)
    proto_names = {to_snake(key): key for key in known}
    named: dict[str, Any] = {}
    for key, value in body.items():
        field = key if key in known else proto_names.get(key)
        if field is None:
            raise InputError(f"{what}: {key} is not a known field")
        if value is None:
            # a field left out (proto3 JSON), as in a receipt: `"receipt_id": null` beside
            # `receiptId` was "given twice" here and read in a receipt (review 37)
            continue
        if field in named:
            raise InputError(f"{what}: {field} is given twice ({to_snake(field)} and {field})")
        named[field] = value
    body = named
    out: dict[str, str] = {}
    for key in (*required, *optional):
        value = body.get(key)
        if value is None:
            if key in required:
                raise InputError(f"{what}: {key} is required")
            continue
        if not isinstance(value, str):
            raise InputError(f"{what}: {key} must be a string")
        if key in required and not value.strip():
            raise InputError(f"{what}: {key} must not be empty")
        # a fiscal document's own limit, as the agent says it at every door (§11)
        limit = MAX_FISCAL_DOCUMENT if key == "fiscalDocument" else TEXT_MAX
        if len(value) > limit:
            raise InputError(f"{what}: {key} is too long (at most {limit} characters)")
        out[key] = value
    return out


# The top level's "at" (its only `"at"`): a string with nothing escaped in it.
_AT = re.compile(rb'"at"\s*:\s*"([^"\\]*)"')


def receipt_of_body(raw: bytes) -> Receipt:
    """`receipt_from_json(parse_json(raw, "request body"))`, the same receipt, validated
    straight from the bytes by pydantic-core (no `json.loads`, then no dicts to validate)
    when the body is one that way reads exactly as the long way does. The long way answers
    everything else, with its words: any refusal, a body that says `explain` (a float
    there is a lax bool to pydantic, a refusal to `parse_json`), and an `at` not spelled
    as `models.RFC3339_NATIVE` says. The `at` kept is the long way's `datetime` (its offset
    a `datetime.timezone`, not pydantic-core's own)."""
    key = raw.find(b'"at"')  # found by bytes.find: a regex's scan of 4 KB costs 20 µs
    found = _AT.match(raw, key) if key >= 0 and raw.find(b'"at"', key + 4) < 0 else None
    if found is not None and b"explain" not in raw:
        try:
            receipt = Receipt.model_validate_json(raw)
            at = _time_of_a_sale(found[1].decode())
        except ValueError:  # pydantic's ValidationError, a bad `at`, not UTF-8
            pass
        else:  # the long way's `at` (no validator reads it), the rest is the same
            vars(receipt)["at"] = at  # frozen to callers, not to us
            return receipt
    return receipt_from_json(parse_json(raw, "request body"))


def _receipt_call(name: str) -> Callable[[Agent, bytes | None], str]:
    """A call whose body is a receipt: read from the bytes, answered as `json_text`. The
    agent's method is looked up at each call, on the agent (as `agent.quote(...)` would)."""

    def run(agent: Agent, raw: bytes | None) -> str:
        method: Callable[[Receipt], CheckoutResult] = getattr(agent, name)
        return json_text(method(receipt_of_body(raw or b"")))

    return run


def _document(fn: Callable[[Agent, Any], dict[str, Any]]) -> Callable[[Agent, bytes | None], str]:
    """A call whose body is parsed as every input is (`parse_json`), answered as a document."""
    return lambda agent, raw: json_document(
        fn(agent, None if raw is None else parse_json(raw, "request body"))
    )


# The small request bodies: (required, optional) fields, all strings; read by the calls
# below and described by `openapi` (by the name of their proto message).
_SMALL_BODIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "IdentifyRequest": ((), ("text",)),
    # no card is an empty one, INVALID: refused by the agent as the CLI and gRPC refuse it (400)
    "BalanceRequest": ((), ("card", "at")),
    "ConfirmRequest": (("receiptId",), ("fiscalDocument",)),
    "CancelRequest": (("receiptId",), ()),
}


def _small(body: Any, what: str, message: str) -> dict[str, str]:
    return _fields(body, what, *_SMALL_BODIES[message])


def _identify(agent: Agent, body: Any) -> dict[str, Any]:
    # Empty or absent text (the same in proto3 JSON) is what an empty scan is: INVALID,
    # as gRPC and the CLI answer it (the contract §4), not a refused request.
    return json_of(agent.identify(_small(body, "identify", "IdentifyRequest").get("text", "")))


def _balance(agent: Agent, body: Any) -> dict[str, Any]:
    fields = _small(body, "balance", "BalanceRequest")
    at = parse_time(fields["at"], "balance: at") if "at" in fields else None  # as gRPC's
    return json_of(agent.balance(fields.get("card", ""), at))


def _confirm(agent: Agent, body: Any) -> dict[str, Any]:
    fields = _small(body, "confirm", "ConfirmRequest")
    return json_of(agent.confirm(fields["receiptId"], fields.get("fiscalDocument")))


def _cancel(agent: Agent, body: Any) -> dict[str, Any]:
    return json_of(agent.cancel(_small(body, "cancel", "CancelRequest")["receiptId"]))


@dataclass(frozen=True)
class Call:
    path: str
    rpc: str  # the PosAgent RPC it is: its messages describe the body and the answer
    summary: str
    run: Callable[[Agent, bytes | None], str]  # the body (None for a GET) to the answer
    method: str = "POST"
    # A read that takes no lock a commit holds (`Agent._read`): run on the loop when small.
    on_loop: bool = False


# The id a retry of each call must keep (`/openapi.json`'s 503s say it too): a refund's
# own id, not its sale's `receiptId` (a retry under the same receiptId and a new refundId
# is a second refund; review 59). Identify, balance and status have none.
RETRIED_ID = {
    "Quote": "receiptId",
    "Hold": "receiptId",
    "Confirm": "receiptId",
    "Cancel": "receiptId",
    "Checkout": "receiptId",
    "Refund": "refundId",
}


def _retry(call: Call) -> str:
    """What a 503 of the HTTP door asks: a retry with the same id, for a call that has one
    (a timed-out identify, balance or status was told "the same receiptId", a field it
    has not: review 59, rev59)."""
    key = RETRIED_ID.get(call.rpc)
    return f"retry with the same {key}" if key else "retry"


CALLS = (
    Call(
        "/v1/identify",
        "Identify",
        "Identify a card, phone or barcode",
        _document(_identify),
        on_loop=True,
    ),
    Call(
        "/v1/quote",
        "Quote",
        "Price a receipt; stores and reserves nothing",
        _receipt_call("quote"),
        on_loop=True,
    ),
    Call(
        "/v1/hold",
        "Hold",
        "Price a receipt and reserve its redemption until Confirm, Cancel or expiry",
        _receipt_call("hold"),
    ),
    Call(
        "/v1/confirm",
        "Confirm",
        "Commit a held receipt after the fiscal receipt",
        _document(_confirm),
    ),
    Call(
        "/v1/cancel",
        "Cancel",
        "Release a hold (payment failed, basket abandoned)",
        _document(_cancel),
    ),
    Call(
        "/v1/checkout",
        "Checkout",
        "Hold and Confirm in one call",
        _receipt_call("checkout"),
    ),
    Call(
        "/v1/refund",
        "Refund",
        "Commit a refund of a committed receipt",
        _document(lambda agent, body: json_of(agent.refund(refund_from_json(body)))),
    ),
    Call(
        "/v1/balance",
        "Balance",
        "Available and pending points of a card",
        _document(_balance),
        on_loop=True,
    ),
    Call(
        "/v1/status",
        "Status",
        "Cache version, queues, last sync, devices",
        _document(lambda agent, body: status_json(agent.status())),
        "GET",
    ),
)


# ---------------------------------------------------------------- the application


class Api:
    """The routes over one Agent; `serving` turns /healthz to 503 while shutting down."""

    def __init__(
        self,
        agent: Agent,
        *,
        token: str = "",
        max_workers: int = 8,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self.agent = agent
        self.token = token.encode()
        # Web pages allowed to call (a kiosk's front end); any other page's request, which a
        # browser marks with its Origin, is refused (`_refusal`).
        self.origins = frozenset(o.encode() for o in allowed_origins)
        self.serving = True
        # The instance id of `tillpoint run` (agent/forward.py): a request naming another
        # one (X-Tillpoint-Instance) was meant for another agent and gets 421, unrun.
        self.instance = b""
        self.pool = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="http-call")
        # The POST calls are answered in `__call__`, straight on ASGI; Starlette routes the
        # rest (GETs, another method's 405, what is no call's 404).
        self.posts = {c.path: c for c in CALLS if c.method == "POST"}
        routes = [
            Route(c.path, functools.partial(self._routed, c), methods=[c.method]) for c in CALLS
        ]
        routes += [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/openapi.json", self._openapi, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: self._no_such_call})
        # "/v1/identify/" is no call: a 404 saying so, not Starlette's bodiless 307 to
        # the path without the slash (which a POS's HTTP client may not follow with a POST)
        self.app.router.redirect_slashes = False
        self._openapi_body = ""  # built on the first request: 4-12 ms off `run`'s start

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            version = scope.get("http_version", "1.1")
            if not version.startswith("1."):
                # h11 takes any "HTTP/D.D" and uvicorn answered HTTP/9.9 or 2.0 as 1.1;
                # RFC 9110 §15.6.6: a major version the server does not speak is a 505
                # (HTTP/1.9 is HTTP/1: answered as 1.1, RFC 9110 §2.5)
                refused = error_response(
                    "HTTP_VERSION_NOT_SUPPORTED",
                    f"HTTP/{shorten(version, 10)} is not supported: send HTTP/1.1",
                    {"Connection": "close"},
                )
                await _drain_if_closing(scope, receive, closing=True)
                await refused(scope, receive, send)
                return
            if version == "1.0" and any(n == b"transfer-encoding" for n, _ in scope["headers"]):
                # RFC 9112 §6.1: HTTP/1.0 has no chunked coding, and a server MUST treat
                # such a message's framing as faulty (a proxy of that version in front
                # framed its body otherwise); until review 38 it was read as chunked and
                # run. The body is read and dropped first: the connection closes after
                # the answer, and a close with it unread is a reset that cuts the 400.
                await _drain_if_closing(scope, receive)
                refused = error_response(
                    "INVALID_ARGUMENT",
                    "invalid HTTP request: Transfer-Encoding in an HTTP/1.0 request:"
                    " send HTTP/1.1, or the body with a Content-Length",
                    {"Connection": "close"},
                )
                await refused(scope, receive, send)
                return
            if not self.serving:
                # stopping (`HttpServer.stop`): every answer says `Connection: close` and
                # the connection ends after it (uvicorn answers the client's close so), as
                # the server will not keep it (RFC 9112 §9.6). Until review 37 the 503 of
                # /healthz, and a call served in that moment, kept it alive; the server
                # then closed it unasked and the POS's next call met "closed without
                # response".
                scope["headers"] = [*scope["headers"], _CLOSE]
            path = scope["path"]
            if not path or path[0] != "/":  # not the usual origin form: one test, no more
                scope = _origin_form(scope)
            refusal = self._refusal(scope)
            if refusal is not None:
                # answered before the body is read: on a connection that closes after the
                # answer, the body is read and dropped first (`_drain_if_closing`), or the
                # close with it still coming is a reset that cuts the answer (review 40)
                await _drain_if_closing(scope, receive)
                await refusal(scope, receive, send)
                return
        call = self.posts.get(scope["path"]) if scope["type"] == "http" else None
        if call is not None and scope["method"] == "POST":
            # A POST call on bare ASGI: no Request, Response or routing of Starlette's (the
            # same answer, headers and all, a tenth of a millisecond less a call).
            answer = await self._answer(call, scope, receive)
            if answer is not None:  # None: the client left before its body arrived
                status, body = answer
                headers = [(b"content-length", b"%d" % len(body)), _HEAD]
                if status == 408:
                    # RFC 9110 §15.5.9: the connection ends with the 408 (h11 closes it
                    # once the answer is out). Left open it waited for the rest of the
                    # body, then 75 s of keep-alive: a client trickling its body held one
                    # of the 256 connections 85 s, not 10 s (review 34).
                    headers.append(_CLOSE)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http":
            # no route here reads a body (a 404, a 405, the GETs): as a refusal's above
            await _drain_if_closing(scope, receive)
        await self.app(scope, receive, send)

    def _refusal(self, scope: Any) -> Response | None:
        """The answer to a request this agent must not run, None for the rest; the headers
        read in one pass (a few µs of every call).

        - A web page's request (a browser sends `Origin`) from an origin not in
          `[http] allowed_origins`: 403. Without it any page the till's browser opens could
          post a sale to 127.0.0.1 (a form's `text/plain` POST needs no CORS preflight).
          A page whose own name is made to resolve to 127.0.0.1 (DNS rebinding) is
          refused the same way: a browser sends `Origin` with every POST, its own site's
          too. Its GETs (status, health, the description) carry no customer's data.
        - No or a wrong token when one is set: 401.
        - Another `tillpoint run`'s instance id (the CLI's forward): 421, nothing run."""
        origin = authorization = instance = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                # one credential a request (RFC 9110 §11.6.2): a second field is no token,
                # whichever of the two is right (until review 37 the last one counted)
                authorization = value if authorization is None else b""
            elif name == b"origin":
                origin = value
            elif name == b"x-tillpoint-instance":
                instance = value
        if origin is not None and bytes(origin) not in self.origins:
            return page_refused(bytes(origin))
        if self.token and (
            authorization is None or not bearer_matches(bytes(authorization), self.token)
        ):
            return error_response(
                "UNAUTHENTICATED",
                "missing or wrong token: send Authorization: Bearer <token>",
                {"WWW-Authenticate": "Bearer"},
            )
        if instance is not None and not hmac.compare_digest(bytes(instance), self.instance):
            response = error_response("FAILED_PRECONDITION", "another agent's instance id")
            response.status_code = 421  # Misdirected Request: run nothing, the CLI runs it
            return response
        return None

    async def _in_pool(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self.pool, fn), CALL_TIMEOUT_S)

    async def _routed(self, call: Call, request: Request) -> Response:
        answer = await self._answer(call, request.scope, request.receive)
        if answer is None:  # the client has gone: an answer nobody reads
            return Response(b"", 400)
        return Response(answer[1], answer[0], media_type=JSON)

    async def _answer(self, call: Call, scope: Any, receive: Any) -> tuple[int, bytes] | None:
        """A call's status and body; None when the client left before its body arrived."""
        started = time.perf_counter()
        failed = ""  # the error's code
        try:
            raw = await _read_body(scope, receive) if call.method == "POST" else None

            def run() -> bytes:  # in the pool: parsing and encoding 4 MiB stay off the loop too
                return call.run(self.agent, raw).encode()

            if call.on_loop and raw is not None and len(raw) <= ON_LOOP_MAX_BYTES:
                return 200, run()
            return 200, await self._in_pool(run)
        except ClientDisconnect:
            return None
        except HttpError as exc:
            failed = exc.code
            return error_body(exc.code, exc.message)
        except TillpointError as exc:
            edge = edge_of(exc)
            failed = edge.code
            return error_body(edge.code, edge.message)
        except TimeoutError:
            failed = "UNAVAILABLE"
            return error_body(
                "UNAVAILABLE",
                f"the agent did not answer within {CALL_TIMEOUT_S:.0f} s: {_retry(call)}",
            )
        except asyncio.CancelledError:
            if self.serving:
                raise
            # `tillpoint run` is stopping and GRACE_S is over: uvicorn cancels the request,
            # whose agent call goes on in the pool to its end (`HttpServer.stop` waits for
            # it; a commit is whole or nothing). The POS hears that, not uvicorn's plain
            # "Internal Server Error" (a bug, §12): a retry answers what was stored.
            failed = "UNAVAILABLE"
            return error_body(
                "UNAVAILABLE",
                "the agent is stopping and this call did not finish in time:"
                f" {_retry(call)} once it is back",
            )
        except Exception as exc:  # one readable line to the POS, the trace to the log
            log.exception("HTTP %s %s failed", call.method, call.path)
            failed = "INTERNAL"
            return error_body(
                "INTERNAL",
                f"internal error ({type(exc).__name__}): a bug in tillpoint, see the agent's log",
            )
        finally:
            metrics = self.agent.metrics
            if metrics is not None:
                if failed:
                    metrics.count_error(failed)
                if call.rpc == "Checkout":
                    metrics.checkout_seconds.observe(time.perf_counter() - started)

    async def _no_such_call(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            methods = {c.method for c in CALLS if c.path == request.url.path} or {"GET"}
            if "GET" in methods:  # served with it (Starlette), as RFC 9110 asks
                methods.add("HEAD")
            allowed = ", ".join(sorted(methods))
            return error_response(  # RFC 9110: a 405 says what is allowed
                "METHOD_NOT_ALLOWED",
                f"{request.method} {request.url.path}: use {allowed}",
                {"Allow": allowed},
            )
        if status == 404:
            return error_response(
                "NOT_FOUND",
                f"no such call: {request.method} {request.url.path} (see /openapi.json)",
            )
        return error_response("INVALID_ARGUMENT", f"HTTP {status}")

    async def _healthz(self, request: Request) -> Response:
        if not self.serving:
            return error_response("UNAVAILABLE", "the agent is shutting down")
        try:
            status = await self._in_pool(self.agent.status)
        except Exception:
            log.warning("health check: status unavailable", exc_info=True)
            return error_response("UNAVAILABLE", "the agent cannot read its status")
        if not status.cache_version:
            return error_response("UNAVAILABLE", "no snapshot loaded")
        doc: dict[str, Any] = {"status": "SERVING", "cacheVersion": status.cache_version}
        problem = status.parts.get("storageError")
        if problem:  # still serving quotes: said, not 503 (nothing would then clear it)
            doc["storageError"] = problem
        ending = _certificate_ending(status.parts.get("certificateExpiresAt"))
        if ending:  # within 30 days or past: a monitor that reads only /healthz sees it
            doc["certificateExpiresAt"] = ending
        return Response(json_document(doc), media_type=JSON)

    async def _openapi(self, request: Request) -> Response:
        if not self._openapi_body:
            self._openapi_body = json_document(openapi(preflights=bool(self.origins)))
        return Response(self._openapi_body, media_type=JSON)


def _certificate_ending(expires_at: Any) -> str:
    """The till's certificate expiry (Status field 46) when it is within the renewal
    warning's days of now, or past: what `/healthz` adds; "" otherwise."""
    from tillpoint.sync import RENEW_WARNING_DAYS  # the package alone: no cryptography

    if not expires_at or not isinstance(expires_at, str):
        return ""
    try:
        moment = datetime.fromisoformat(expires_at)
    except ValueError:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment - datetime.now(UTC) < timedelta(days=RENEW_WARNING_DAYS):
        return expires_at
    return ""


def _origin_form(scope: Any) -> Any:
    """The scope of an absolute-form request (`POST http://host:port/v1/quote HTTP/1.1`,
    what a client configured with a proxy sends: RFC 9112 §3.2.2, a server MUST accept it)
    with the path of its URI, which uvicorn leaves whole in `path`; any other unchanged
    (`OPTIONS *`, a path with no slash: no call's)."""

    def path_of(target: str) -> str | None:
        scheme, found, rest = target.partition("://")
        if not found or scheme.lower() not in ("http", "https"):
            return None
        start = rest.find("/")
        return rest[start:] if start >= 0 else "/"

    if path_of(scope["path"]) is None:
        return scope
    # the path cut from the target as sent, then decoded as uvicorn decodes an origin-form
    # one: an escaped slash in the authority (`http://x%2Fv1%2Fcheckout`) is no path
    raw = path_of(bytes(scope.get("raw_path") or b"").decode("ascii", "replace")) or "/"
    return {**scope, "path": unquote(raw), "raw_path": raw.encode("ascii", "replace")}


async def _read_body(scope: Any, receive: Any) -> bytes:
    """The request's body from ASGI's `receive`: bad input (400, as the CLI's exit 2) over
    `MAX_BODY_BYTES` (announced, before a byte of it is read, or streamed), 408 when it
    takes longer than `BODY_TIMEOUT_S` (a timer on this loop, not a task as
    `asyncio.wait_for` makes), ClientDisconnect when the client leaves first."""
    too_large = f"request larger than {MAX_BODY_BYTES >> 20} MiB"
    encoded = b""
    announced = b""
    for name, value in scope["headers"]:
        if name == b"content-length":
            announced = value
            if value.isdigit() and int(value) > MAX_BODY_BYTES:
                if int(value) <= DRAIN_MAX_BYTES:
                    await _drain_if_closing(scope, receive)
                raise HttpError("INVALID_ARGUMENT", too_large)
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            encoded = value
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    if message.get("more_body", False):
                        await _drain_if_closing(scope, receive, size)
                    raise HttpError("INVALID_ARGUMENT", too_large)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
                if getattr(getattr(receive, "__self__", None), CUT, False):
                    # the client ended its side (`_Protocol.eof_received`): no byte can
                    # come, so the 408 goes out now, not after BODY_TIMEOUT_S
                    of = f" of its {int(announced)}" if announced.isdigit() else ""
                    raise HttpError(
                        "REQUEST_TIMEOUT",
                        f"the request body ended after {size}{of} bytes: the client"
                        " closed its side of the connection before sending it whole",
                    )
    except TimeoutError:
        raise HttpError(
            "REQUEST_TIMEOUT", f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s"
        ) from None
    if encoded:  # read to its end first: the connection goes on to the next request
        # A gzip body was read as JSON ("not valid JSON"), and plain JSON sent with the
        # header was taken as if it were not compressed: neither is what the POS meant.
        raise HttpError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Encoding {_shown(encoded, 40)} is not accepted: send the JSON body"
            " uncompressed, without Content-Encoding",
        )
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _drain_if_closing(
    scope: Any, receive: Any, read: int = 0, *, closing: bool = False
) -> None:
    """Read a refused body to its end (discarding it) when the connection closes after
    the answer: HTTP/1.0, `Connection: close`, or an answer that closes it whatever the
    request said (`closing`: a 505, the 503 past the connections' limit). uvicorn closes
    such a connection as soon as the answer is written, and a close with the body still
    arriving is a reset that cuts a client writing it before it reads the answer (the
    400 of a body over 4 MiB; since review 40, rev40a, every answer given before the body
    was read: a 401, 403, 404, 405, 421, 505, that 503). A keep-alive connection needs
    none of this (uvicorn reads the rest of the body after the answer, to reach the next
    request), nor does a client waiting for `100 Continue` (it sends no body: reading
    would ask for it). Bounded by `DRAIN_MAX_BYTES` (`read` counts what was read) and
    `BODY_TIMEOUT_S`: past either, the answer goes out and the connection closes."""
    old = scope.get("http_version") == "1.0"
    closing = closing or old
    for name, value in scope["headers"]:
        # RFC 9110 §10.1.1: HTTP/1.0's expectation is ignored (h11 sends it no `100
        # Continue`), so its client sends the body anyway (review 40, rev40a)
        if name == b"expect" and value.strip().lower() == b"100-continue" and not old:
            return
        if name == b"connection" and b"close" in (t.strip() for t in value.lower().split(b",")):
            closing = True
    if not closing:
        return
    deadline = time.monotonic() + BODY_TIMEOUT_S
    try:
        while read <= DRAIN_MAX_BYTES and time.monotonic() < deadline:
            # a client that sends nothing (it waits for the answer first) is answered
            # after DRAIN_IDLE_S, not after the whole BODY_TIMEOUT_S
            async with asyncio.timeout(DRAIN_IDLE_S):
                message = await receive()
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
    except TimeoutError:
        return
    except asyncio.CancelledError:
        # The stop's grace ended (uvicorn cancels what still runs then): the read ends and
        # the answer goes out as it is. Raised on, it became uvicorn's plain-text 500
        # "Internal Server Error" in place of a 401 (review 40, rev40a).
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return


# ---------------------------------------------------------------- OpenAPI from the protos

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED64: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
}


_INT64_TYPES = frozenset(t for t, schema in _SCALARS.items() if schema.get("format") == "int64")


def _at_most(bound: int) -> str:
    """A regular expression of the digit strings (leading zeros allowed, as `int()` reads
    them) whose value is at most `bound` (> 9): fewer digits, or as many and not past it
    digit by digit."""
    digits = str(bound)
    forms = [f"[0-9]{{1,{len(digits) - 1}}}"]
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            rest = len(digits) - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            forms.append(f"{digits[:i]}[{low}-{int(d) - 1}]{tail}")
    forms.append(digits)
    return "0*(?:" + "|".join(forms) + ")"


def _int64_text(minimum: int | None) -> dict[str, Any]:
    """An int64 written as a string (proto3 JSON), as the agent reads it (`models._int64`):
    digits, a minus sign first if any, no blanks or `+`, within int64; its `minimum` said
    as a pattern too (0: no minus but `"-0"`; −1: `"-1"` the one negative, `"-01"` too), as
    a string has no minimum. Until review 38 (rev38c) the pattern refused `"-0"` and
    `"-01"`, which the agent takes, and took a string past int64, which it refuses."""
    negative = _at_most(-INT64_MIN)  # what may follow the minus sign
    if minimum == 0:
        negative = "0+"
    elif minimum == -1:
        negative = "0*[01]"
    pattern = f"^(?:{_at_most(INT64_MAX)}|-{negative})$"
    return {
        "type": "string",
        "pattern": pattern,
        "maxLength": TEXT_MAX,
        "description": "the same integer as a string of digits (proto3 JSON's int64)",
    }


def _required(name: str) -> list[str]:
    """The fields a request message must carry, as the agent reads it: the models' own
    required fields (agent/models.py), or the small bodies' (`_SMALL_BODIES`)."""
    if name in _SMALL_BODIES:
        return list(_SMALL_BODIES[name][0])
    model = _model_of(name)
    if model is None:
        return []
    return [f.alias or key for key, f in model.model_fields.items() if f.is_required()]


def _model_of(name: str) -> type[Any] | None:
    """The model (agent/models.py) that reads the request message `name`, if one does."""
    from . import models

    model = getattr(models, name, None)
    return model if isinstance(model, type) and issubclass(model, models.Model) else None


# The limits of a request's fields the openapi document states, as the models check them.
_LIMIT_KEYS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "format",
    "minimum",
    "maximum",
)


def _limits(name: str) -> dict[str, dict[str, Any]]:
    """A request message's per-field limits (JSON name → `minLength`... of the field, and
    `items` → those of its items): from the model's own JSON schema (agent/models.py), or
    the small bodies' (text of at most TEXT_MAX characters; a required one not empty)."""
    if name in _SMALL_BODIES:
        required, optional = _SMALL_BODIES[name]
        return {
            key: {
                "maxLength": MAX_FISCAL_DOCUMENT if key == "fiscalDocument" else TEXT_MAX,
                **({"minLength": 1} if key in required else {}),
                # balance's `at` is read as a receipt's (`_time_of_a_sale`): its pattern
                **(_limits("Receipt")["at"] if key == "at" else {}),
                # no control characters, as in a receipt's ids (`Agent.confirm`)
                **(
                    {"pattern": _limits("Receipt")["receiptId"]["pattern"]}
                    if key == "fiscalDocument"
                    else {}
                ),
            }
            for key in (*required, *optional)
        }
    model = _model_of(name)
    if model is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for key, prop in model.model_json_schema(by_alias=True)["properties"].items():
        first = (prop.get("anyOf") or [{}])[0]  # a union's first member: its native form
        if first.get("type") in ("string", "integer"):  # (a `qty`'s pattern, an int's range)
            prop = {**first, **prop}  # the field's own (redeemPoints' minimum) win
        found = {k: prop[k] for k in _LIMIT_KEYS if k in prop}
        items = prop.get("items", {})
        if any(k in items for k in _LIMIT_KEYS):
            found["items"] = {k: items[k] for k in _LIMIT_KEYS if k in items}
        if found:
            out[key] = found
    return out


# A field of a message in tillpoint.proto: its type, name and number, and its comment.
_PROTO_FIELD = re.compile(
    r"^\s*(?:optional\s+|repeated\s+)?[\w.]+(?:<[^>]*>)?\s+(\w+)\s*=\s*\d+\s*(?:\[[^\]]*\])?;"
    r"\s*(?://\s?(.*))?$"
)
_PROTO_BLOCK = re.compile(r"^\s*(message|enum|service|oneof)\s+(\w+)\s*\{")


@functools.cache
def _proto_comments() -> dict[str, str]:
    """The comments of tillpoint.proto, the package's own copy beside its generated code:
    "Message" for the comment above a message, "Message.field" for the comment above a
    field and the one after it on its line. /openapi.json gives them as descriptions, so a
    POS written from it reads what the proto says of each field (reflection carries no
    comments); review 34, doc34. A comment set apart by a blank line (a section's heading)
    describes nothing."""
    path = Path(pb.__file__).with_name("tillpoint.proto")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:  # pragma: no cover - a package without its .proto: no descriptions
        return {}
    found: dict[str, str] = {}
    above: list[str] = []
    blocks: list[str] = []  # the enclosing message (or enum, service), innermost last
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            above.append(stripped[2:].strip())
            continue
        block = _PROTO_BLOCK.match(line)
        field = _PROTO_FIELD.match(line) if blocks and blocks[-1] else None
        if block is not None:
            name = block.group(2) if block.group(1) == "message" else ""
            if name and not blocks and above:
                found[name] = " ".join(above)
            blocks.append(name)
        elif field is not None:
            words = [*above, *([field.group(2).strip()] if field.group(2) else [])]
            if words:
                found[f"{blocks[-1]}.{field.group(1)}"] = " ".join(words)
        elif stripped.startswith("}") and blocks:
            blocks.pop()
        above = []
    return found


def _described(schema: dict[str, Any], words: str | None) -> dict[str, Any]:
    return {**schema, "description": words} if words else schema


def _message_schema(
    desc: Descriptor, schemas: dict[str, Any], *, request: bool = False
) -> dict[str, Any]:
    """A `$ref` to the proto3 JSON schema of `desc`, adding it (and what it uses) to
    `schemas`. Fields with presence (messages, `optional`) may be absent or null; in a
    request every field but a required one may be null (read as left out, proto3 JSON).
    A request's messages say which fields are required and refuse unknown ones, as the
    agent does."""
    ref = {"$ref": f"#/components/schemas/{desc.name}"}
    if desc.name in schemas:
        return ref
    schemas[desc.name] = {}  # placeholder: recursion stops here
    properties: dict[str, Any] = {}
    limits = _limits(desc.name) if request else {}
    required = _required(desc.name) if request else []
    for field in desc.fields:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value = _field_schema(entry.fields_by_name["value"], schemas)
            properties[field.json_name] = {"type": "object", "additionalProperties": value}
            continue
        schema = _field_schema(field, schemas, request=request)
        limit = dict(limits.get(field.json_name, {}))
        if limit.get("items") and "$ref" not in schema:
            schema = {**schema, **limit["items"]}
        limit.pop("items", None)
        if field.is_repeated:
            schema = {"type": "array", "items": schema}
        # a string's or a list's limits, an integer's range
        if limit and (field.is_repeated or schema.get("type") in ("string", "integer")):
            schema = {**schema, **limit}
        # A request's int64 may also be a string of digits (proto3 JSON), which the agent
        # reads as the number: described as the integer or that string (review 36, doc36).
        # An answer's int64 is always a JSON integer (agent/wire.py): described so.
        forms = [schema]
        if request and not field.is_repeated and field.type in _INT64_TYPES:
            forms.append(_int64_text(schema.get("minimum")))
        # null is a field left out (proto3 JSON): fine for any field but a required one
        if (field.has_presence or request) and field.json_name not in required:
            forms.append({"type": "null"})
        properties[field.json_name] = forms[0] if len(forms) == 1 else {"anyOf": forms}
    described: dict[str, Any] = _described(
        {"type": "object", "properties": properties}, _proto_comments().get(desc.name)
    )
    if request:
        described.update(_request_rules(desc.name, required))
    for name, values in _STRING_ENUMS.get(desc.name, {}).items():
        properties[name] = {"type": "string", "enum": list(values)}
    for field in desc.fields:
        words = _proto_comments().get(f"{desc.name}.{field.name}")
        properties[field.json_name] = _described(properties[field.json_name], words)
    schemas[desc.name] = described
    return ref


def _request_rules(name: str, required: list[str]) -> dict[str, Any]:
    """What a request message's schema says beyond its properties: its required fields,
    one of a model's `NEEDS_ONE_OF` fields (a line's `priceMinor` or `amountMinor`)
    present and not null (a `not` of the object whose fields are each absent or null),
    nothing else. The fields' proto names (`receipt_id`), which
    the agent reads too, are not described: a schema with both spellings of a required
    field could not list it as required, and generated clients would make it optional."""
    rules: dict[str, Any] = {}
    if required:
        rules["required"] = required
    model = _model_of(name)
    needs = getattr(model, "NEEDS_ONE_OF", ()) if model is not None else ()
    if needs:
        # Said as a `not` of "each absent or null", not as an `anyOf` of partial objects:
        # a client generator reads an object's `anyOf` as a union of types, and
        # openapi-python-client made a line two classes holding one price each, neither
        # with `sku` or `qty` (review 35, doc35). Validators read the two alike.
        rules["not"] = {
            "description": f"a line needs {' or '.join(needs)} (not null)",
            "properties": {key: {"type": "null"} for key in needs},
        }
    rules["additionalProperties"] = False
    return rules


# String fields of the answers whose values are a closed list (the contract §13); the proto
# keeps them strings.
_STRING_ENUMS: dict[str, dict[str, tuple[str, ...]]] = {
    "CouponVerdict": {
        "status": ("APPLIED", "REJECTED"),
        "reason": (
            "",
            "UNKNOWN",
            "NOT_YET_VALID",
            "EXPIRED",
            "OTHER_CUSTOMER",
            "ALREADY_USED",
            "DUPLICATE",
            "NOT_APPLICABLE",
        ),
    },
}


def _field_schema(
    field: FieldDescriptor, schemas: dict[str, Any], *, request: bool = False
) -> dict[str, Any]:
    if field.message_type is not None:
        return _message_schema(field.message_type, schemas, request=request)
    if field.enum_type is not None:
        return {"type": "string", "enum": _enum_names(field)}
    return dict(_SCALARS[field.type])


def _enum_names(field: FieldDescriptor) -> list[str]:
    """The names an enum field is written with, less its zero `*_UNSPECIFIED`: proto3's
    "not set", which no HTTP answer carries (a quote leaves `state` out, as the CLI does;
    every other enum of an answer is always set) and which no request sends (no request
    of PosAgent has an enum field; one would leave the field out). Listed, a generated
    client made it a value every POS had to handle (review 35, doc35)."""
    values = field.enum_type.values if field.enum_type is not None else ()
    return [v.name for v in values if not (v.number == 0 and v.name.endswith("_UNSPECIFIED"))]


# What a web page of `[http] allowed_origins` may ask in its preflight (`_Cors`), read by
# the CORS layer that answers it and by /openapi.json that declares it.
CORS_METHODS = ("GET", "POST")
CORS_HEADERS = ("authorization", "content-type")
CORS_MAX_AGE_S = 600


def openapi(*, preflights: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every call `PosAgent` has, from its proto descriptors;
    `preflights` (`[http] allowed_origins` set): each path's OPTIONS, a web page's CORS
    preflight, as `_Cors` answers it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("tillpoint")
    except PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        release = "0"
    service = pb.DESCRIPTOR.services_by_name["PosAgent"]
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "enum": sorted(set(HTTP_STATUS) - {"UNIMPLEMENTED"}),  # gRPC's only
                        },
                        "message": {"type": "string"},
                    },
                }
            },
        }
    }
    error = {"$ref": "#/components/schemas/Error"}

    def answer(what: str) -> dict[str, Any]:
        return {"description": what, "content": {JSON: {"schema": error}}}

    # what any path may answer 400, and what a call adds to it (its own fields, a card)
    unreadable = (
        "a request that is not HTTP the agent can read (no Host, two Content-Length, a"
        " garbage request line, a head over 16 KiB)"
    )
    # a whole number with a decimal point or an exponent is JSON Schema's integer, not
    # the agent's (CONTRACT §12): said here, where a reader of the document looks (review 36)
    malformed = (
        "malformed JSON, unknown field, out-of-range value, a whole number written with a"
        " decimal point or an exponent (8990.0, 8.99e3: send 8990), over 4 MiB"
    )
    errors = {
        "400": answer(f"bad input: {malformed}; or {unreadable}, on any path"),
        "401": answer("a token is set and the request has none or another"),
        "403": answer("a web page's request: its Origin is not in [http] allowed_origins"),
        "405": answer("another method than the call's"),
        "408": answer("the body did not arrive within 10 s"),
        "415": answer("the body has a Content-Encoding (gzip, …): send it uncompressed"),
        "421": answer("X-Tillpoint-Instance names another agent (the CLI's header): nothing run"),
        "500": answer("a bug in tillpoint: the agent's log has the trace"),
        "503": answer(
            "not ready, the call timed out, or the ledger cannot be written: retry the same request"
        ),
        "505": answer("a request line of another HTTP major version than 1 (HTTP/2.0, 9.9)"),
    }
    # What any request may meet (a request head the agent cannot read is a 400 on any
    # path, GETs too); a body's own; then each call's (agent/service.py's), in the words of
    # docs/INTEGRATION.md's table of errors for that call: a generated client documents
    # each response by its description (review 34, doc34: every call had the same words,
    # a refund's 412 "blocked card, expired hold", a balance's 404 "unknown receipt").
    anywhere = ("400", "401", "403", "405", "421", "500", "503", "505")
    of_a_body = ("408", "415")
    unpriced = (
        "refused: no snapshot loaded yet, or the receipt's card is blocked or lost (identify"
        " says BLOCKED): sell without loyalty"
    )
    # an INVALID card is bad input (§4, §12; until review 34, inv34, it was a 412)
    invalid_card = (
        "card is INVALID (identify says so: empty, a wrong check digit, letters or signs, a +"
        ' number that is not a Russian phone): "card not accepted", scan it again'
    )
    sale_400 = (
        f"bad input: {malformed}; or the receipt's {invalid_card} or sell without the card;"
        f" or {unreadable}"
    )
    reused = "this receiptId was used with another body: a changed basket needs a new receiptId"
    of_the_call: dict[str, dict[str, str]] = {
        "Quote": {"400": sale_400, "412": unpriced},
        "Hold": {"400": sale_400, "409": reused, "412": unpriced},
        "Confirm": {
            "404": "this receiptId is not held at this till: hold it again",
            "412": "the hold expired (hold the same body again: it is priced again) or was"
            " cancelled (sell under a new receiptId)",
        },
        "Cancel": {
            "404": "this receiptId is not held at this till",
            "412": "the receipt is confirmed: use a refund",
        },
        "Checkout": {
            "400": sale_400,
            "409": reused,
            "412": unpriced + "; or this receiptId was cancelled: sell under a new one",
        },
        "Refund": {
            "404": "the receipt was not sold on this till, or is only held there, not"
            " confirmed (confirm it if it was paid, else cancel it)",
            "409": "this refundId was used with another body: a new return needs a new refundId",
            "412": "more than was sold comes back (returns before this one counted), or a"
            " SKU not on the receipt",
        },
        "Balance": {
            "400": "bad input: malformed JSON, unknown field, an at that is no RFC 3339 time,"
            f" over 4 MiB; or the {invalid_card}; or {unreadable}",
            "404": "a card this till does not know (identify says UNKNOWN): show no balance",
            "412": "the card is blocked or lost (identify says BLOCKED): show no balance",
        },
    }
    # 503: a sale's call is retried with the same id; the others have none
    examples = copy.deepcopy(_examples())  # the document is the caller's to change
    paths: dict[str, Any] = {}
    for call in CALLS:
        rpc = service.methods_by_name.get(call.rpc)
        if rpc is None:  # not in this build's PosAgent: not described
            continue
        own = of_the_call.get(call.rpc, {})
        met = {*anywhere, *own}
        if call.method == "POST":
            met.update(of_a_body)
        if call.rpc in RETRIED_ID:
            own = {
                **own,
                "503": f"not ready, the call timed out, or the ledger cannot be written:"
                f" retry with the same body and {RETRIED_ID[call.rpc]}",
            }
        operation: dict[str, Any] = {
            "operationId": call.rpc[0].lower() + call.rpc[1:],
            "summary": call.summary,
            "responses": {
                "200": {
                    "description": f"{rpc.output_type.name} as proto3 JSON",
                    "content": {JSON: {"schema": _message_schema(rpc.output_type, schemas)}},
                },
                **{
                    status: answer(own[status]) if status in own else errors[status]
                    for status in sorted(met)
                },
            },
        }
        if call.method == "POST":
            operation["requestBody"] = {
                "required": True,
                "content": {
                    JSON: {"schema": _message_schema(rpc.input_type, schemas, request=True)}
                },
            }
        shown = [e for e in examples.get(call.path, ()) if e[0] == 200]
        if shown:  # named alike in the body and the answer: a reader pairs them
            answered = operation["responses"]["200"]["content"][JSON]
            answered["examples"] = {
                name: {"summary": summary, "value": answer} for _, name, summary, _, answer in shown
            }
            if "requestBody" in operation:
                operation["requestBody"]["content"][JSON]["examples"] = {
                    name: {"summary": summary, "value": body}
                    for _, name, summary, body, _ in shown
                    if body is not None
                }
        # A refusal's example: the error a real agent answered (its body), and the request
        # that met it in its description (not among the request's examples: it may be one
        # the schema refuses).
        for status, name, summary, body, refusal in examples.get(call.path, ()):
            if status == 200:
                continue
            # its own copy: the shared answers (`errors`) stay without examples
            response = operation["responses"][str(status)] = copy.deepcopy(
                operation["responses"][str(status)]
            )
            response["content"][JSON].setdefault("examples", {})[name] = {
                "summary": summary,
                "description": f"The answer to {json_document(body).strip()}",
                "value": refusal,
            }
        paths[call.path] = {call.method.lower(): operation}
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "summary": "200 while the agent serves with a snapshot loaded, 503 otherwise",
            "responses": {
                "200": {
                    "description": "serving",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["status", "cacheVersion"],
                                "properties": {
                                    "status": {"type": "string", "enum": ["SERVING"]},
                                    "cacheVersion": {"type": "integer"},
                                    "storageError": {
                                        "type": "string",
                                        "description": "present while the ledger cannot be"
                                        " written: sales answer 503, quotes work; it stays"
                                        " until a sale is stored again",
                                    },
                                    "certificateExpiresAt": {
                                        "type": "string",
                                        "description": "RFC 3339: when the till's"
                                        " certificate ends, present from 30 days before"
                                        " (and after): renew it (tillpoint hub enroll"
                                        " --renew)",
                                    },
                                },
                            }
                        }
                    },
                },
                **{status: errors[status] for status in anywhere},
                "503": answer("no snapshot loaded, or shutting down"),
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document: the calls, their bodies and answers",
            "responses": {
                "200": {
                    "description": "the OpenAPI 3.1 document",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                **{status: errors[status] for status in anywhere},
            },
        }
    }
    # Each GET path answers HEAD as GET without the body (RFC 9110 §9.3.2), served by
    # Starlette for every GET route: described the same, its answers with no content.
    for operations in paths.values():
        get = operations.get("get")
        if get is not None:
            operations["head"] = {
                "operationId": get["operationId"] + "Head",
                "summary": get["summary"] + " (the headers of GET's answer, no body)",
                "responses": {
                    status: {"description": response["description"]}
                    for status, response in get["responses"].items()
                },
            }
    if preflights:
        for operations in paths.values():
            operations["options"] = _preflight(operations, errors, anywhere)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tillpoint PosAgent over HTTP",
            "version": release,
            "description": "The PosAgent calls as proto3 JSON; see docs/INTEGRATION.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }


@functools.cache
def _examples() -> dict[str, list[tuple[int, str, str, Any, Any]]]:
    """Each call's examples by its path: (HTTP status, name, summary, request, answer),
    from the file `make openapi-examples` generates from examples/ and a real agent's
    answers (agent/openapi_examples.py); read once."""
    from .openapi_examples import load

    found: dict[str, list[tuple[int, str, str, Any, Any]]] = {}
    for step in load():
        found.setdefault(step["path"], []).append(
            (
                step.get("status", 200),
                step["name"],
                step["summary"],
                step.get("request"),
                step["answer"],
            )
        )
    return found


def _preflight(
    operations: dict[str, Any], errors: dict[str, Any], anywhere: Sequence[str]
) -> dict[str, Any]:
    """A path's OPTIONS with `[http] allowed_origins` set, from what `_Cors` is given
    (`CORS_METHODS`, `CORS_HEADERS`, `CORS_MAX_AGE_S`): a page's preflight it allows (200,
    "OK" as text with the CORS headers), or refuses (403, the JSON error); an OPTIONS that
    is no preflight (no `Access-Control-Request-Method`) reaches the call, which answers
    405 (and what any request may meet). Until review 32 they were no operation at all."""
    first = next(iter(operations.values()))
    methods = ", ".join(CORS_METHODS)

    def header(what: str, const: str | None = None) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        if const is not None:
            schema["const"] = const
        return {"description": what, "schema": schema}

    refused = errors["403"]
    return {
        "operationId": first["operationId"] + "Preflight",
        "summary": f"A web page's CORS preflight: {methods} with the headers"
        f" {', '.join(CORS_HEADERS)}, from an origin in [http] allowed_origins",
        "security": [{}],  # a browser sends no Authorization with a preflight
        "responses": {
            **{status: errors[status] for status in anywhere},
            "200": {
                "description": f"allowed: the page may send its request (for {CORS_MAX_AGE_S} s)",
                "headers": {
                    "Access-Control-Allow-Origin": header("the page's origin"),
                    "Access-Control-Allow-Methods": header("the methods", methods),
                    "Access-Control-Allow-Headers": header("the headers it may send"),
                    "Access-Control-Max-Age": header("seconds", str(CORS_MAX_AGE_S)),
                },
                "content": {"text/plain": {"schema": {"type": "string", "const": "OK"}}},
            },
            "403": {
                "description": "the preflight is refused: its origin is not in [http]"
                " allowed_origins, or it asks for another method or header",
                "content": refused["content"],
            },
            "405": {
                "description": "an OPTIONS that is no preflight (no"
                " Access-Control-Request-Method): the path's methods are in Allow",
                "content": errors["405"]["content"],
            },
        },
    }


# ---------------------------------------------------------------- the server


class _Cors(CORSMiddleware):
    """Starlette's CORS layer (with `[http] allowed_origins`), whose refused preflight is
    answered as every refusal of a web page is: 403 PERMISSION_DENIED as the JSON error,
    not its 400 text/plain "Disallowed CORS origin" (review 31)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code == 200:
            return answer
        origin = request_headers["origin"]
        if not self.is_allowed_origin(origin=origin):
            return page_refused(origin.encode("latin-1"))
        failed = bytes(answer.body).decode().removeprefix("Disallowed CORS ")  # "method", …
        method = request_headers["access-control-request-method"].encode("latin-1")
        headers = request_headers.get("access-control-request-headers", "").encode("latin-1")
        return error_response(
            "PERMISSION_DENIED",
            f"a web page's preflight was refused ({failed}): it asked for"
            f" {_shown(method, 20)} with the headers {_shown(headers)!r}; the agent takes"
            f" {' and '.join(CORS_METHODS)} with the headers"
            f" {' and '.join(h.title() for h in CORS_HEADERS)}",
        )


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    status, body = error_body(
        "UNAVAILABLE", "the agent has too many HTTP connections open: retry in a moment"
    )
    await _drain_if_closing(scope, receive, closing=True)  # the answer closes: as a refusal
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", b"%d" % len(body)), _HEAD, (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Past `limit_concurrency` uvicorn answers with the app its h11 module names
# `service_unavailable`, a plain-text 503; every answer here is the JSON error document a
# POS reads (docs/CONTRACT.md §12). One module attribute of the pinned uvicorn, replaced
# for the process; tests/test_http_connections.py holds it to the JSON body.
setattr(h11_impl, "service_unavailable", _too_many_connections)  # noqa: B010


class _Cycle(h11_impl.RequestResponseCycle):
    """uvicorn's request cycle, whose answer given before `100 Continue` closes."""

    async def send(self, message: Any) -> None:
        if (
            self.waiting_for_100_continue
            and not self.response_started
            and self.conn.their_state is h11.SEND_BODY
        ):
            # RFC 9110 §10.1.1: answered before the body of a request waiting for `100
            # Continue` was asked for (a 401, a 405, a body over 4 MiB). The client has
            # not sent it and may send its next request instead, which a kept
            # connection read as the refused one's body: the POS's next call was
            # answered 400 for what remained of it, or not at all (review 38). So the
            # answer says `Connection: close` and the connection ends after it. A
            # request with no body (a GET, `Content-Length: 0`: h11 has read it whole)
            # holds nothing back and keeps its connection: until review 39 (rev39a) it
            # was closed too, a connection a call for a POS sending `Expect` on each.
            self.scope["headers"] = [*self.scope["headers"], _CLOSE]  # uvicorn adds it
            self.keep_alive = False
        await super().send(message)


# uvicorn's h11 protocol makes each request's cycle by this module attribute's name (the
# pinned uvicorn), replaced for the process as `service_unavailable` is above.
setattr(h11_impl, "RequestResponseCycle", _Cycle)  # noqa: B010


_BYTES_REPR = re.compile(r"""bytearray\(b(['"])(.*)\1\)""")
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line that ends a head, as h11 finds it


def _head_too_large(buffered: bytes) -> bool:
    """Whether the request head at the start of `buffered` (h11's unread bytes) is, or will
    be, longer than `MAX_HEAD_BYTES`, its blank line included."""
    if len(buffered) <= MAX_HEAD_BYTES:
        return False
    end = _HEAD_END.search(buffered, 0, MAX_HEAD_BYTES + 1)
    return end is None or end.end() > MAX_HEAD_BYTES


def _two_framings(scope: Any) -> bool:
    """Whether a request names both `Transfer-Encoding` and `Content-Length` (and is not
    marked to close already)."""
    headers = scope["headers"]
    names = {name for name, _ in headers}
    return {b"transfer-encoding", b"content-length"} <= names and _CLOSE not in headers


_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)  # Linux's SIOCOUTQ for a socket


def _unacknowledged(transport: asyncio.Transport) -> int:
    """The bytes written to a connection its client has not acknowledged yet: asyncio's
    buffer and the kernel's send queue (`SIOCOUTQ`: sent and unacknowledged, or not sent
    yet), which shrink only as the client's kernel takes the answer. asyncio's buffer
    alone moved only when Linux took more of it, once its send queue (~4 MiB on loopback)
    had drained by a third (a socket is writable again when its free space is half what
    it holds): a POS reading steadily at under a third of that a timer (~130 KB/s) made
    no progress there and was reset mid-answer (review 39, rev39g). Where the kernel does
    not say (not Linux, a socket gone), asyncio's buffer alone."""
    left = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if sock is not None and _OUTQ is not None:
            queued = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
            left += struct.unpack("i", queued)[0]
    return left


class _Protocol(h11_impl.H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's head: a connection that
    has sent nothing, or only part of a head, for `HEAD_TIMEOUT_S` is closed. uvicorn
    times out only idle keep-alive connections after an answer and a body's arrival is
    ours (`BODY_TIMEOUT_S`), so a client that opened connections and sent nothing, or a
    byte now and then, held them for ever and, at `limit_concurrency` of them, kept every
    POS out."""

    _head_timer: asyncio.TimerHandle | None = None
    # How many bytes h11 holds of the next request's head while it waits for one (IDLE):
    # each read adds its own, as h11 takes none until the head is whole. None while a
    # request is under way: measured (one copy) when the next head is waited for.
    _head_bytes: int | None = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_late)
        # The connection limit is judged once, as the connection is accepted (itself
        # counted): one of the first `MAX_CONNECTIONS` is served, a later one gets the 503
        # (`_too_many_connections`) to each request and closes. uvicorn judged it at each
        # request by the connections open then: the 256th was refused already and, with
        # 257 open at once, every request that came meanwhile, on connections long let in
        # too (189 of a burst of 257; review 38). Its `limit_concurrency` on this
        # connection: None never refuses, 0 always does.
        admitted = len(self.connections) <= MAX_CONNECTIONS
        self.limit_concurrency = None if admitted else 0
        # Told of any byte of an answer the kernel has not taken (`pause_writing`), not
        # only past 64 KiB: what waits is timed (`ANSWER_TIMEOUT_S`) however much it is.
        transport.set_write_buffer_limits(high=0)

    _answer_timer: asyncio.TimerHandle | None = None
    _answer_left = 0  # the answer's bytes the kernel had not taken at the last look
    _answer_moved = 0.0  # the loop's time of the look that last saw fewer (or the pause)

    def pause_writing(self) -> None:
        """The kernel did not take all of an answer: it has `ANSWER_TIMEOUT_S` to take
        some of it, and again after each time it did. A client that sent calls
        (pipelined) and never read the answers filled its socket's buffers, and uvicorn
        waited to write the rest for ever (its flow control has no bound, its keep-alive
        timer does not run while an answer is written, and a close waits for the bytes
        unwritten): the connection stayed counted, one of `MAX_CONNECTIONS`, its call's
        task stuck (review 38). Past the time without progress it is reset."""
        super().pause_writing()
        if self._answer_timer is None:
            self._answer_left = _unacknowledged(self.transport)
            self._answer_moved = self.loop.time()
            self._answer_timer = self.loop.call_later(
                ANSWER_TIMEOUT_S / ANSWER_LOOKS, self._answer_late
            )

    def resume_writing(self) -> None:
        if self._answer_timer is not None:
            self._answer_timer.cancel()
            self._answer_timer = None
        super().resume_writing()

    def _answer_late(self) -> None:
        """A look at a paused answer, `ANSWER_LOOKS` times in `ANSWER_TIMEOUT_S`: reset
        once no look has seen the client take some of the answer (`_unacknowledged`) for
        `ANSWER_TIMEOUT_S`. Until review 39 (rev39a) the time ran until the kernel had
        taken every byte, so a POS on a slow link reading a multi-MB answer (an `explain`
        of thousands of lines: ~4 MiB past what the kernel buffers) steadily was reset
        mid-answer. Until review 40 (rev40a) the look came once each `ANSWER_TIMEOUT_S`,
        starting the time again from the look: a client that stopped reading just after
        the pause (or whose kernel acknowledged its receive buffer's fill a few ms after
        it: one that never read) was reset twice the time on. The time since a look saw
        progress is never more than the time since the progress: no reader is reset
        sooner than `ANSWER_TIMEOUT_S` after it last read. (While writing is paused
        uvicorn adds only a pipelined request's `100 Continue` or 400, a few bytes: they
        can hide as much progress, never make it up.)"""
        self._answer_timer = None
        left = _unacknowledged(self.transport)
        now = self.loop.time()
        if left < self._answer_left:  # progress: the time again, from this look
            self._answer_left = left
            self._answer_moved = now
            if not left:
                return
        quiet = now - self._answer_moved
        if quiet < ANSWER_TIMEOUT_S - 0.001:  # a timer may run a hair early
            step = min(ANSWER_TIMEOUT_S / ANSWER_LOOKS, ANSWER_TIMEOUT_S - quiet)
            self._answer_timer = self.loop.call_later(step, self._answer_late)
            return
        # A reset: a close waits for the bytes no one reads, and an abort alone left the
        # kernel what it held (up to its ~4 MiB send queue), an orphan socket sending it
        # whenever the client read again and then an orderly end (a cut answer taken for
        # a whole one by a client reading to the close; review 39, rev39g). A linger of 0
        # drops them and sends the reset.
        self.reset()

    def reset(self) -> None:
        """End the connection with a reset: its answer's bytes, in asyncio's buffer and
        the kernel's, are dropped (`_answer_late`, and a stop's grace run out)."""
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if (
            self.conn.their_state is h11.IDLE
            and not data.strip(b"\r\n")
            and not len(self.conn._receive_buffer)
        ):
            # Only empty lines between requests (RFC 9112 §2.2: ignored): dropped as they
            # come, no timer touched. Passed on, they cancelled uvicorn's keep-alive timer
            # and started the head's: an old HTTP stack's CRLF after a POST's body, held
            # by Nagle until the answer came, closed the kept connection 10 s after each
            # call instead of 75 (review 38, long38). A connection that sends only these
            # is still closed by the head's timer armed at its connection.
            return
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a whole head: the request's own limits
            self._disarm()
        elif self._head_timer is None:  # the first bytes of the next request's head
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._answer_timer is not None:
            self._answer_timer.cancel()
            self._answer_timer = None
        super().connection_lost(exc)

    def handle_events(self) -> None:
        """A request head over `MAX_HEAD_BYTES` is refused however it arrives: h11 limits
        only a head still incomplete in its buffer, so a whole head of 20 KiB (or 100 KiB)
        written at once was served, and the 400 "larger than 16 KiB" depended on how the
        bytes were cut (review 34, doc34; docs/CONTRACT.md §12). Looked at before each new
        request's head is read: on data, and after an answer for a pipelined request.

        The bytes of a head still coming are counted (`_head_bytes`), not copied out of
        h11 at every read: a head trickled in small reads cost a copy of all of it so far
        at each (16 KiB a byte for a client sending a byte at a time; review 35). h11's
        buffer is copied once a request, when its head is first waited for (what a
        pipelining client sent already), and once more should the head pass the limit."""
        if self.conn.their_state is h11.IDLE:
            if self._head_bytes is None:
                self._head_bytes = len(self.conn.trailing_data[0])
            if self._head_bytes:
                self._skip_empty_lines()
            if self._head_bytes > MAX_HEAD_BYTES and _head_too_large(self.conn.trailing_data[0]):
                self.send_400_response(f"its head is larger than {MAX_HEAD_BYTES >> 10} KiB")
                return
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._head_bytes = None  # a request under way: its body's bytes are not a head
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and _two_framings(cycle.scope):
            # RFC 9112 §6.1: Transfer-Encoding and Content-Length in one request (h11 reads
            # the body by the first) "might indicate an attempt to perform request
            # smuggling", and the server MUST close the connection after answering it.
            # Said as the client's `Connection: close`: uvicorn answers it with one and
            # closes, and a refused body is read first (`_drain_if_closing`). Until
            # review 37 (spec37c) the next request on the connection was served.
            cycle.scope["headers"] = [*cycle.scope["headers"], _CLOSE]  # the app's scope too
            cycle.keep_alive = False

    def _skip_empty_lines(self) -> None:
        """RFC 9112 §2.2: empty lines before a request line are ignored (old HTTP stacks
        end a POST's body with an extra CRLF). h11 answered them 400 "no request line
        received" and closed the connection: a POS's next call on it met it closed, after
        an answer to nothing it had sent (review 38). Dropped from h11's buffer (its
        `ReceiveBuffer`, of the pinned h11); the head's timer runs on (a client sending
        only empty lines is closed as one that sends no head)."""
        buffer = self.conn._receive_buffer
        data = buffer._data
        lead = 0
        while lead < len(data) and data[lead] in b"\r\n":
            lead += 1
        if lead:
            buffer._extract(lead)
            self._head_bytes = len(data)

    def shutdown(self) -> None:
        """uvicorn's graceful stop: an idle connection is closed, a call under way is
        answered and its connection closed after it. That answer now says so
        (`Connection: close`, RFC 9112 §9.6), as `Api` says it for requests that arrive
        after the stop began: until review 37 (rev37g) a call in flight at the stop (its
        body still arriving, a call waiting on the hub) was answered keep-alive, and the
        POS's next call on the connection met "closed without response"."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.scope["headers"] = [*cycle.scope["headers"], _CLOSE]  # the app's scope too
        super().shutdown()

    _half_closed = False

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio allows True
        """The client shut its side after sending a request (`nc -N`, a client that
        half-closes to mark the request's end). asyncio closed the connection at once,
        so the request was served (a checkout committed) and its answer dropped: the POS
        never knew. A request under way keeps the connection open to be answered, then
        it closes; with none, it closes as before."""
        if self.cycle is not None and not self.cycle.response_complete:
            self._half_closed = True
            if self.conn.their_state is h11.SEND_BODY:
                # ... and before its body was whole: the reader hears it at once
                # (`_read_body`: the 408 of a body cut short) instead of waiting
                # BODY_TIMEOUT_S for bytes that cannot come, holding the request, a
                # connection of `limit_concurrency` and a stop's grace (review 34)
                setattr(self.cycle, CUT, True)
                self.cycle.message_event.set()
            return True
        return None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._half_closed and not self.transport.is_closing():
            self.transport.close()
        elif (
            self.conn.their_state is h11.IDLE
            and self._head_timer is None
            and len(self.conn._receive_buffer)
            and not self.transport.is_closing()
        ):
            # Part of the next head came pipelined, while this call was under way (no head
            # is timed then): its time runs from this answer. Until review 40 (rev40a)
            # nothing armed it and the connection had keep-alive's 75 s, not the head's.
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_late)
        elif self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # Answered before its body was read (over 4 MiB announced, a 401, a 405):
            # uvicorn reads the rest after the answer, to reach the next request, with no
            # bound of its own
            # (its keep-alive timer starts again with every byte). The rest has the time
            # of a body, as every body has: past it the connection closes. Until review
            # 38 a client announcing 10^18 bytes and sending one now and then held the
            # connection, one of `MAX_CONNECTIONS`, for ever.
            self.loop.call_later(BODY_TIMEOUT_S, self._rest_late, self.cycle)

    def _rest_late(self, cycle: Any) -> None:
        if (
            self.cycle is cycle
            and self.conn.their_state is h11.SEND_BODY
            and not self.transport.is_closing()
        ):
            self.transport.close()

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot read (no Host in HTTP/1.1, two or a bad Content-Length, a
        head over h11's 16 KiB, a garbage request line): the JSON error document every
        answer here is (docs/CONTRACT.md §12), not uvicorn's plain-text 400, then close.
        Called by uvicorn's `handle_events` inside its `except h11.RemoteProtocolError`,
        so the exception at hand is h11's, with its words."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, h11.RemoteProtocolError):
            reason = msg
        elif exc.error_status_hint == 431:  # h11's "Receive buffer too long"
            reason = f"its head is larger than {MAX_HEAD_BYTES >> 10} KiB"
        else:  # h11's words, its "illegal request line: bytearray(b'…')" without the repr
            reason = _BYTES_REPR.sub(r"\2", str(exc))
        _, body = error_body("INVALID_ARGUMENT", f"invalid HTTP request: {shorten(reason, 120)}")
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no answer started yet
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\ncontent-type: %s\r\n"
                b"connection: close\r\n\r\n%s" % (len(body), JSON.encode(), body)
            )
        self.transport.close()


class _StopWords(logging.Filter):
    """uvicorn's words at a stop whose grace ran out, as what they are. A call waiting to
    write its answer behind one its client has not read (pipelined) is cancelled at the
    grace's end, and uvicorn logged that as an ERROR "Exception in ASGI application" with
    the CancelledError's trace, for each such connection, and the cancel itself ("Cancel
    N running task(s), timeout graceful shutdown exceeded") as an ERROR too: a stop doing
    what docs/CONTRACT.md §12 says read as a crash in the till's log, where a trace means
    a bug (review 40, rev40a). The first is dropped (`_Server.shutdown` says the reset in
    one warning), the second is a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError) and str(record.msg).startswith(
            "Exception in ASGI application"
        ):
            return False
        if str(record.msg).startswith("Cancel %s running task(s)"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("uvicorn.error").addFilter(_StopWords())


class _Server(uvicorn.Server):
    """uvicorn's server, whose stop ends with a reset what its grace left open."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """After uvicorn's graceful stop (in-flight answers get `GRACE_S`), a connection
        still open whose answer waits unread (its writer paused, its answer's time not
        over) is reset, as the answer's time resets one (`_Protocol.reset`).
        uvicorn left it as it was, neither closed nor reset: the kernel sent what it held
        of the answer whenever the client read, then nothing, and at `run`'s exit an
        orderly end (a cut answer with a clean close; review 39, rev39j)."""
        await super().shutdown(sockets)
        # Only an answer waiting unread (its writer paused): a call the grace's end
        # cancelled is still to write its 503 (`Api`), which the reset would drop.
        left = [
            c
            for c in self.server_state.connections
            if isinstance(c, _Protocol) and c.flow.write_paused
        ]
        for connection in left:
            connection.reset()
        if left:
            log.warning(
                "stopping: %d HTTP connection(s) whose answer the client had not taken"
                " when the grace ended are reset",
                len(left),
            )
            await asyncio.sleep(0)  # the aborts' closes, queued on the loop, run


class AsgiThread:
    """An ASGI app on uvicorn (h11) in its own thread and event loop, on a socket bound here
    (so a port in use is an error now, and port 0 picks a free one)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        # Each address of `host`, as gRPC and /metrics bind them (`config.bind_listeners`);
        # IPPROTO_TCP named there: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it each answer's body waits for the client's delayed ACK (40 ms).
        try:
            self.socks = bind_listeners(host, port)
        except OSError as exc:
            raise TillpointError(
                f"cannot listen on {listen_text(host, port)} for HTTP: {not_resolved(host, exc)}"
                " (set [http] listen)"  # as gRPC's and /metrics' name their key
            ) from None
        # Listening from here on: a POS that connects once gRPC (started first) answers,
        # or once `serving.json` names this port, waits in the backlog until `start`
        # rather than being refused (the CLI then ran its call in a process of its own).
        for sock in self.socks:
            sock.listen(BACKLOG)
        self.sock = self.socks[0]
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            http=_Protocol,
            loop="asyncio",
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            date_header=True,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=GRACE_S,
            limit_concurrency=MAX_CONNECTIONS,  # judged as each is accepted: `_Protocol`
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            backlog=BACKLOG,
        )
        self.server = _Server(config)
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=self.socks)
        except BaseException:  # the thread's last line: say it, the agent goes on with gRPC
            log.exception("the HTTP interface stopped")

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise TillpointError(f"the HTTP interface did not start on {self.host}")
            time.sleep(0.01)

    def stop_unstarted(self) -> None:
        """Close the sockets of a server never started (`run` stopped during start-up)."""
        for sock in self.socks:
            sock.close()

    def stop(self) -> None:
        """Finish in-flight requests (GRACE_S at most), then close."""
        self.server.should_exit = True
        self.thread.join(GRACE_S + 5)
        for sock in self.socks:
            sock.close()


class HttpServer:
    """The HTTP interface over one Agent; `start`, then `stop`."""

    def __init__(
        self,
        agent: Agent,
        listen: str,
        *,
        token: str = "",
        max_workers: int = 8,
        allowed_origins: Iterable[str] = (),
    ):
        try:
            host, port = split_listen(listen)
        except ValueError as exc:
            raise InputError(f"http listen {exc}") from None
        problem = token_problem("http", listen, token)
        if problem:
            raise InputError(problem)
        origins = tuple(allowed_origins)
        self.api = Api(agent, token=token, max_workers=max_workers, allowed_origins=origins)
        app: Any = self.api
        if origins:  # a browser's preflight (OPTIONS) and the answers' CORS headers
            app = _Cors(
                self.api,
                allow_origins=origins,
                allow_methods=list(CORS_METHODS),  # what /openapi.json declares
                allow_headers=list(CORS_HEADERS),
                max_age=CORS_MAX_AGE_S,
            )
        self.serve = AsgiThread(app, host, port)
        self.host, self.port = host, self.serve.port

    def start(self) -> None:
        self.serve.start()

    def stop(self) -> None:
        """Answer 503 on /healthz, finish in-flight requests (GRACE_S at most), close."""
        self.api.serving = False
        self.serve.stop()
        self.api.pool.shutdown(wait=True, cancel_futures=True)
