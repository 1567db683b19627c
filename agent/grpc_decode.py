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
from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor


class _Undecodable:
    __slots__ = ("whole", "why")

    def __init__(self, why: str, whole: str = "") -> None:
        self.why = why
        self.whole = whole  # the whole message, when it is not about the bytes


def _exact(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """The message, or `_Undecodable` when it carries fields the contract does not have:
    unknown fields are bad input (the contract §10), as over HTTP and the CLI, where a
    misspelt field is refused; gRPC kept them aside unread. A message with none
    re-encodes to its own length once any are dropped (6 µs for 50 lines); only a
    different length is looked at closely (a sender's non-minimal encoding, or one)."""

    def read(data: bytes) -> Any:
        message = deserializer(data)
        message.DiscardUnknownFields()
        if message.ByteSize() != len(data):
            found = _unknown(deserializer(data), "")
            if found:
                return _Undecodable("", found)
        return message

    return read


def _unknown(message: Any, where: str) -> str:
    """Where the first unknown field is ("" when there is none), in words."""
    unknown = unknown_fields.UnknownFieldSet(message)
    if len(unknown):
        field = unknown[0]  # indexed, as its stubs say (no __iter__ there)
        name = message.DESCRIPTOR.name
        at = f"{where}: " if where else ""
        known = message.DESCRIPTOR.fields_by_number.get(field.field_number)
        if known is not None:
            # protobuf keeps a known field sent with another wire type (a varint where the
            # contract has a string) as an unknown one: it is the sender's type that is wrong
            return (
                f"{at}field number {field.field_number} ({known.json_name}) of {name} is"
                f" sent as {_WIRE_TYPES.get(field.wire_type, 'another type')}, not as the"
                f" contract's {_type_name(known)}"
            )
        return (
            f"{at}field number {field.field_number} is not a field of {name}"
            " (unknown fields are refused: is the POS built for a newer contract?)"
        )
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        path = f"{where}.{field.json_name}" if where else field.json_name
        items = enumerate(value) if field.is_repeated else [(None, value)]
        for n, item in items:
            found = _unknown(item, path if n is None else f"{path}[{n}]")
            if found:
                return found
    return ""


_WIRE_TYPES = {
    0: "a varint",
    1: "a 64-bit fixed value",
    2: "a length-delimited value",
    3: "a group",
    5: "a 32-bit fixed value",
}


def _type_name(field: FieldDescriptor) -> str:
    """A field's declared type in the .proto's words (`string`, `int64`, `repeated ReceiptLine`)."""
    if field.message_type is not None:
        kind = field.message_type.name
    elif field.enum_type is not None:
        kind = field.enum_type.name
    else:
        kind = {
            v: k.removeprefix("TYPE_").lower()
            for k, v in vars(FieldDescriptor).items()
            if k.startswith("TYPE_") and isinstance(v, int)
        }.get(field.type, "another type")
    return f"repeated {kind}" if field.is_repeated else kind


def _keeping(deserializer: Callable[[bytes], Any], limit: int | None) -> Callable[[bytes], Any]:
    def read(data: bytes) -> Any:
        if limit is not None and len(data) > limit:
            return _Undecodable(
                "",
                f"request larger than {limit >> 20} MiB ({len(data)} bytes; at most {limit})",
            )
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or a string field that is not UTF-8
            return _Undecodable(str(exc) or type(exc).__name__)

    return read


def _refuse(context: grpc.ServicerContext, bad: _Undecodable) -> None:
    context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        bad.whole or f"the request is not a valid message of this call: {bad.why}"[:300],
    )


# grpcio reads these off a handler's function: a non-blocking handler (grpc_health's
# `Watch`) answers through a callback and holds no worker thread while its stream is
# open; a thread pool of its own keeps a kind of call off the server's. A wrapper that
# dropped them made every open health `Watch` (one a channel, with client-side health
# checking) hold one of the agent's 8 workers: 8 channels and no POS call was answered.
_CARRIED = ("experimental_non_blocking", "experimental_thread_pool")


def _carry(wrapper: Callable[..., Any], behavior: Callable[..., Any]) -> Callable[..., Any]:
    for name in _CARRIED:
        if hasattr(behavior, name):
            setattr(wrapper, name, getattr(behavior, name))
    return wrapper


def _one(behavior: Callable[..., Any]) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext, *callback: Any) -> Any:
        if isinstance(request, _Undecodable):
            _refuse(context, request)
        return behavior(request, context, *callback)  # a non-blocking one's callback

    return _carry(call, behavior)


def _checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, _Undecodable):
            _refuse(context, request)
        yield request


def _stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    def call(requests: Iterator[Any], context: grpc.ServicerContext, *callback: Any) -> Any:
        return behavior(_checked(requests, context), context, *callback)

    return _carry(call, behavior)


if TYPE_CHECKING:  # generic in grpc-stubs only
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class RefuseUndecodable(_Interceptor):
    """`exact`: the method prefix (a service) whose requests must carry no unknown field
    (the agent's `PosAgent`: the contract's bad input); the hub takes a newer till's
    fields it does not know, as protobuf does, so a till can be upgraded first.
    `limit`: the largest request in bytes; a larger one is bad input (INVALID_ARGUMENT,
    the contract §10), read by a server whose transport takes more than `limit`."""

    def __init__(self, exact: str = "", limit: int | None = None) -> None:
        self.exact = exact
        self.limit = limit

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        read = handler.request_deserializer
        if self.exact and handler_call_details.method.startswith(self.exact):
            read = _exact(read)
        changes: dict[str, Any] = {"request_deserializer": _keeping(read, self.limit)}
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
