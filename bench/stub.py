"""The gRPC floor of `make bench`: a do-nothing PosAgent in its own process.

`python -m bench.stub REPLIES` serves `PosAgent.Quote` on a random 127.0.0.1 port (printed
as one line on stdout) with the same server settings as `tillpoint run` (a pool of 8
threads). REPLIES holds the real agent's serialized replies, one per request, each as a
4-byte big-endian length and the bytes; request `g-<i>` gets reply i (parsed once, at
start). So the stub parses the same request and serializes a reply of the same size, and
does nothing else: what `tillpoint run` costs above it is the agent's own work.
It serves until its stdin closes.
"""

from __future__ import annotations

import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc


def read_replies(path: Path) -> list[pb.CheckoutResult]:
    data = path.read_bytes()
    out: list[pb.CheckoutResult] = []
    at = 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        out.append(pb.CheckoutResult.FromString(data[at + 4 : at + 4 + size]))
        at += 4 + size
    return out


def write_replies(path: Path, replies: list[bytes]) -> None:
    with path.open("wb") as f:
        for reply in replies:
            f.write(len(reply).to_bytes(4, "big"))
            f.write(reply)


class Stub(pb_grpc.PosAgentServicer):
    def __init__(self, replies: list[pb.CheckoutResult]) -> None:
        self.replies = replies

    def Quote(self, request: pb.Receipt, context: grpc.ServicerContext) -> pb.CheckoutResult:
        return self.replies[int(request.receipt_id.rpartition("-")[2]) % len(self.replies)]


def client(
    port: int, payloads: list[bytes], seconds: float, ready: Any, go: Any, done: Any
) -> None:
    """One POS in its own process (`bench.run`'s throughput figure; here, where the imports
    are light): warm up, say ready, wait for `go`, then Quote (raw bytes, no client-side
    protobuf work) as fast as answered for `seconds`; puts the count in `done`."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/tillpoint.v1.PosAgent/Quote")
        for payload in payloads[:5]:
            call(payload, timeout=10)
        ready.put(1)
        go.wait(120)
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            call(payloads[n % len(payloads)], timeout=10)
            n += 1
    done.put(n)


def main() -> int:
    replies = read_replies(Path(sys.argv[1]))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_PosAgentServicer_to_server(Stub(replies), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the bench closes the pipe
    server.stop(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
