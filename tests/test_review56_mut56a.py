"""Review 56 (mut56a): mutation testing of the till's service edges — the `PosAgent`
server's bearer token (`agent/grpc_auth.py`), the standard gRPC health service of the till
and the hub (`agent/grpc_health.py`), sd_notify, the watchdog and the signals
(`agent/systemd.py`), a root command on an installed data directory (`agent/privileges.py`)
and the words a fraction in an integer field is told (`agent/advice.py`). Each test pins a
rule a surviving mutant (or a hand-made one the tool cannot make) broke and no test held,
with real parts: real gRPC servers on 127.0.0.1, a real `NOTIFY_SOCKET` datagram socket,
real `tillpoint run` processes and real signals, real uid changes in child processes.
docs/DECISIONS.md, "Review 56 (mut56a)", lists the mutants."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tillpoint.agent.service import Agent

from .conftest import grpc_served

TIMEOUT = 10
TOKEN = "s3cret-token"
REFUSAL = "missing or wrong token: send the metadata authorization: Bearer <token>"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# ---------------------------------------------------------------- grpc_auth: the token


@pytest.fixture
def guarded(agent: Agent) -> Iterator[grpc.Channel]:
    """A channel to `agent`'s gRPC server that asks for the token `TOKEN`."""
    with (
        grpc_served(agent, token=TOKEN) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield channel


def _refused_without_the_token(call: grpc.RpcError) -> None:
    assert call.code() is grpc.StatusCode.UNAUTHENTICATED
    assert call.details() == REFUSAL


def test_a_health_watch_without_the_token_is_refused_and_with_it_streams(
    guarded: grpc.Channel,
) -> None:
    """A `Watch` (a unary-stream call: the refusal takes the handler's own kind) without
    the token is refused before the health service answers anything: a load balancer
    with no token learns nothing of the till; with it, the stream says SERVING."""
    stub = health_pb2_grpc.HealthStub(guarded)
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        stream = stub.Watch(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError) as refused:
            next(stream)
        _refused_without_the_token(refused.value)
    good = (("authorization", f"Bearer {TOKEN}"),)
    stream = stub.Watch(health_pb2.HealthCheckRequest(), metadata=good, timeout=TIMEOUT)
    try:
        assert next(stream).status == SERVING
    finally:
        stream.cancel()


def test_a_caller_without_the_token_has_its_bytes_never_read(guarded: grpc.Channel) -> None:
    """Bytes that are no `Receipt` (or one too large, 4 MiB and a byte) sent with no
    token: UNAUTHENTICATED, as any call without it, never INVALID_ARGUMENT, which only
    reading them could say (the refusal drops the request's decoder)."""
    quote = guarded.unary_unary("/tillpoint.v1.PosAgent/Quote")
    for body in (b"\xff\xff\xff", b"\x0a" + b"\x80" * 12):
        with pytest.raises(grpc.RpcError) as refused:
            quote(body, timeout=TIMEOUT)
        _refused_without_the_token(refused.value)
    with pytest.raises(grpc.RpcError) as bad:
        quote(b"\xff\xff\xff", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=TIMEOUT)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_method_nobody_serves_is_refused_without_the_token_as_any_other(
    guarded: grpc.Channel,
) -> None:
    """CONTRACT §12 (token auth): every call without the token is UNAUTHENTICATED, one the
    till does not serve too, as the HTTP door's unknown path is 401 (review 36, spec36f).
    It was UNIMPLEMENTED "Method not found!": a caller with no token could tell the
    methods the till serves from the rest by probing, what refusing reflection without the
    token keeps from it, and a POS whose client names a method this release lacks was
    told that before its missing token. With the token it is UNIMPLEMENTED, as before.
    Failed before the fix."""
    for method in ("/tillpoint.v1.PosAgent/Nope", "/nobody.Service/Call"):
        unary = guarded.unary_unary(method)
        with pytest.raises(grpc.RpcError) as refused:
            unary(b"", timeout=TIMEOUT)
        _refused_without_the_token(refused.value)
        streaming = guarded.stream_stream(method)
        with pytest.raises(grpc.RpcError) as refused:
            wrong = (("authorization", "Bearer no"),)
            next(streaming(iter([b""]), metadata=wrong, timeout=TIMEOUT))
        _refused_without_the_token(refused.value)
        with pytest.raises(grpc.RpcError) as unknown:
            unary(b"", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=TIMEOUT)
        assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED
