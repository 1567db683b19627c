"""A request that does not decode is the caller's error: INVALID_ARGUMENT, not INTERNAL.

grpcio answers a request its deserializer cannot read (bytes that are not the message, a
string field that is not UTF-8) with INTERNAL "Exception deserializing request!", which
tells a POS integrator or a till's support engineer that the server broke. Both servers
(the agent's `PosAgent` and the hub) install `RefuseUndecodable`: each handler's
deserializer keeps what it cannot read as `_Undecodable`, and the handler refuses it with
a readable message before any of the service's code runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc


class _Undecodable:
    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _keeping(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def read(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or a string field that is not UTF-8
            return _Undecodable(str(exc) or type(exc).__name__)

    return read


def _refuse(context: grpc.ServicerContext, bad: _Undecodable) -> None:
    context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request is not a valid message of this call: {bad.why}"[:300],
    )


def _one(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            _refuse(context, request)
        return behavior(request, context)

    return call


def _checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, _Undecodable):
            _refuse(context, request)
        yield request


def _stream(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def call(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return behavior(_checked(requests, context), context)

    return call


if TYPE_CHECKING:  # generic in grpc-stubs only
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class RefuseUndecodable(_Interceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        changes: dict[str, Any] = {"request_deserializer": _keeping(handler.request_deserializer)}
        if handler.unary_unary is not None:
            changes["unary_unary"] = _one(handler.unary_unary)
        elif handler.unary_stream is not None:
            changes["unary_stream"] = _one(handler.unary_stream)
        elif handler.stream_unary is not None:
            changes["stream_unary"] = _stream(handler.stream_unary)
        elif handler.stream_stream is not None:
            changes["stream_stream"] = _stream(handler.stream_stream)
        tuple_handler: Any = handler  # grpcio's handlers are named tuples
        replaced: grpc.RpcMethodHandler[Any, Any] = tuple_handler._replace(**changes)
        return replaced
