"""The simulated tills of `bench/hub.py`: processes of their own, calling real `tillpoint
hub serve` processes over gRPC with mTLS, as tills do (a module of its own so that the
spawned processes import it by name)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BATCH = 50
CALL_TIMEOUT_S = 30.0
Till = tuple[str, str, str, str]  # device, enrollment directory, its server, the other one


def _channel(enrollment_dir: str, address: str) -> Any:
    import grpc
    from tillpoint.sync.pki import HUB_TLS_NAME, load_enrollment

    enrollment = load_enrollment(Path(enrollment_dir))
    assert enrollment is not None
    ca, key, cert = enrollment.channel_material()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(
        address, creds, options=[("grpc.ssl_target_name_override", HUB_TLS_NAME)]
    )


def _wait_until(start_at: float) -> None:
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def transaction(device: str, seq: int, customer: str) -> Any:
    from tillpoint.v1 import tillpoint_pb2 as pb

    receipt = f"{device}-{seq}"
    return pb.Transaction(
        device_id=device,
        seq=seq,
        kind=pb.CHECKOUT,
        at="2026-11-30T09:00:00+00:00",
        customer_id=customer,
        request_json=json.dumps({"receiptId": receipt}),
        result_json=json.dumps({"receiptId": receipt, "earnedPoints": 3}),
        points_delta_available=3,
    )


def push(job: tuple[list[Till], int, int, float, int]) -> dict[str, Any]:
    """Each till pushes `rounds` batches of 50 to its server, in seq order (a till waits
    for each answer); then every batch again to the other server under a new batch id.
    Up to `threads` calls at once from this process."""
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    tills, rounds, customers, start_at, threads = job
    stubs = {}
    for device, enrollment, first, second in tills:
        stubs[device] = (
            pb_grpc.HubStub(_channel(enrollment, first)),
            pb_grpc.HubStub(_channel(enrollment, second)),
        )

    def batches(device: str, t: int) -> list[Any]:
        return [
            [
                transaction(device, r * BATCH + i + 1, f"c{(t * 7919 + i) % customers}")
                for i in range(BATCH)
            ]
            for r in range(rounds)
        ]

    def one_till(item: tuple[int, Till], again: bool) -> tuple[int, float]:
        _, (device, _, _, _) = item
        stub = stubs[device][1 if again else 0]
        stored = 0
        for r, txs in enumerate(batches(device, int(device.rsplit("-", 1)[1]))):
            batch_id = f"{'retry' if again else 'b'}-{r}"
            ack = stub.PushTransactions(
                pb.TransactionBatch(device_id=device, transactions=txs, batch_id=batch_id),
                timeout=CALL_TIMEOUT_S,
            )
            stored += ack.accepted
        return stored, time.time()

    _wait_until(start_at)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        first = list(pool.map(lambda item: one_till(item, False), enumerate(tills)))
    ended = max((done for _, done in first), default=time.time())
    with ThreadPoolExecutor(max_workers=threads) as pool:
        again = list(pool.map(lambda item: one_till(item, True), enumerate(tills)))
    return {
        "stored": sum(n for n, _ in first),
        "stored_again": sum(n for n, _ in again),
        "ended": ended,
    }


def redeem(job: tuple[list[tuple[int, Till]], str, int, int, float, float]) -> dict[str, Any]:
    """Every till of this process asks for `points` of the customer `calls` times from
    `start_at`: one call right after the other (`every` 0: a closed loop, the stress
    test), or paced, the till's k-th call at start_at + its phase + k × `every` seconds
    (an open loop while the answers take less than that)."""
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    tills, customer, points, calls, start_at, every = job
    stubs = {device: pb_grpc.HubStub(_channel(enr, first)) for _, (device, enr, first, _) in tills}
    at = datetime.now(UTC).isoformat()
    samples: list[float] = []
    granted: list[int] = []
    lock = threading.Lock()

    def till(item: tuple[int, Till]) -> None:
        n, (device, _, _, _) = item
        stub = stubs[device]
        stub.AuthorizeRedemption(  # connected and warm before the start
            pb.AuthorizeRedemptionRequest(
                device_id=device, receipt_id=f"warm-{n}", customer_id=customer, points=0, at=at
            ),
            timeout=CALL_TIMEOUT_S,
        )
        _wait_until(start_at)
        for k in range(calls):
            if every > 0:  # the phases spread the tills evenly over one period
                _wait_until(start_at + every * (k + (n % 100) / 100))
            t0 = time.perf_counter()
            reply = stub.AuthorizeRedemption(
                pb.AuthorizeRedemptionRequest(
                    device_id=device,
                    receipt_id=f"r{n}-{k}",
                    customer_id=customer,
                    points=points,
                    at=at,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            took = time.perf_counter() - t0
            with lock:
                samples.append(took)
                granted.append(int(reply.authorized_points))

    threads = [threading.Thread(target=till, args=(item,)) for item in tills]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"samples": samples, "granted": granted}
