"""The `PosAgent` server's token: what `[http] token` is to the HTTP interface.

A server bound beyond loopback answers anyone who can reach the till, so `[server] token`
is then required (agent/config.py) and every call must carry the metadata
``authorization: Bearer <token>`` (the scheme in any case); any other call is refused
with UNAUTHENTICATED before the service, the health service or reflection runs, and so
is a call of a method nobody serves (the HTTP door's unknown path is 401 too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from .config import bearer_matches

if TYPE_CHECKING:  # generic in grpc-stubs only
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor

_REFUSAL = "missing or wrong token: send the metadata authorization: Bearer <token>"


def _refuse(_request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)


# any kind of call: a stream-stream handler runs at once, reads nothing and answers nothing
_REFUSED: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(_refuse)


class RequireToken(_Interceptor):
    def __init__(self, token: str) -> None:
        self.token = token.encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if self.authorised(handler_call_details.invocation_metadata):
            return handler
        if handler is None:
            # a method nobody serves: UNAUTHENTICATED as any other call, not UNIMPLEMENTED,
            # which told a caller without the token the methods served (review 56, mut56a)
            return _REFUSED
        kind = next(
            name
            for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
            if getattr(handler, name) is not None
        )
        tuple_handler: Any = handler  # grpcio's handlers are named tuples
        # the bytes are not even read (up to 4 MiB) for a caller without the token
        refused: grpc.RpcMethodHandler[Any, Any] = tuple_handler._replace(
            **{kind: _refuse, "request_deserializer": None}
        )
        return refused

    def authorised(self, metadata: Any) -> bool:
        """One `authorization` value with the token. Two are refused whichever is right
        (one credential a call, as an HTTP request's one `Authorization` field): until
        review 37 the first counted here and the last over HTTP."""
        given = [value for key, value in metadata or () if key == "authorization"]
        if len(given) != 1:
            return False
        value = given[0]
        return bearer_matches(
            value.encode() if isinstance(value, str) else bytes(value), self.token
        )
