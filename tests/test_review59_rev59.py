"""Review 59 (rev59): a second reading of session 59's changes; the two faults it found.

1. The HTTP door's 503 of a call the agent did not answer in time (or did not finish as it
   stopped) named the id to keep per call since session 59 (a refund: `refundId`), but
   told identify, balance and status, which carry no id, to "retry with the same
   receiptId" — what `/openapi.json` says of their 503 ("asks for no id") disagreed.
   Real parts: the agent, its HTTP door on a loopback port, the agent's own locks held
   by the test as a long snapshot switch or commit holds them.
2. The till's chunk watchdog (`pull._Watchdog`) gave the next chunk exactly the time
   `SLOWEST_LINK` (32 KiB/s) needs for the last one's data: 8 s for the hub's 256 KiB
   chunks since session 59. A line of 256 kbit/s (32,000 bytes a second, less after TCP,
   TLS, HTTP/2 and gRPC's framing) needs 8.2-8.7 s: the line session 59 shrank the
   window and the chunks for had its pull cancelled as stalled every few chunks (its
   slow test gave the watchdog a minute to pass). The rule is pinned on the watchdog
   itself, a verdict no clock decides: its limit after a chunk against the time such a
   line needs for that chunk. The call it would cancel is a stand-in that is never
   cancelled (the watchdog is read right after a chunk, and stopped).

And one reading found sound, pinned where no test held it: `hub receipts`' paging at
int64's edge (review 59, mut59b, let `--since`/`--limit` reach 2^63 − 1), on SQLite and
on PostgreSQL alike.

docs/DECISIONS.md, "Review 59 (rev59)".
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from tillpoint.agent import http_api
from tillpoint.agent.http_api import HttpServer, openapi
from tillpoint.agent.limits import INT64_MAX
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_server import CHUNK_BYTES, list_transactions
from tillpoint.sync.loopback import import_doc, sample_master_data
from tillpoint.sync.pull import _Watchdog
from tillpoint.sync.signing import MAX_CHUNK

from .conftest import receipt
from .test_http_api import Client, error_of
from .test_hub_sql import NOW, checkout

# ---------------------------------------------------------------- 1. the HTTP door's 503


def openapi_503(path: str, method: str = "post") -> str:
    return str(openapi()["paths"][path][method]["responses"]["503"]["description"])


def test_a_timed_out_call_without_an_id_is_not_told_to_keep_a_receipt_id(
    agent: Agent, server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status waits for the agent's lock, an identify too large to run on the loop for
    its one read: both past the door's call timeout answer 503 "retry", no id; a
    checkout's still names its receiptId, as `/openapi.json` says of each. Fails before:
    status and identify said "retry with the same receiptId"."""
    monkeypatch.setattr(http_api, "CALL_TIMEOUT_S", 0.5)
    client = Client(server.port)
    # whitespace makes it larger than what runs on the event loop: it runs in the pool
    padded = json.dumps({"text": "4601234567890"}).encode() + b" " * (
        http_api.ON_LOOP_MAX_BYTES + 1
    )
    try:
        with agent._lock:  # a commit or a snapshot switch holds it
            status = error_of(client.get("/v1/status"))
            checkout = error_of(client.post("/v1/checkout", receipt("r1")))
        with agent._one_read:  # another read is running
            identify = error_of(client.post("/v1/identify", raw=padded))
        for said in (status, identify):
            assert said[:2] == (503, "UNAVAILABLE"), said
            assert said[2].startswith("the agent did not answer within "), said
            assert said[2].endswith(" s: retry"), said
        assert checkout[2].endswith("retry with the same receiptId"), checkout
        assert "receiptId" not in openapi_503("/v1/status", "get")
        assert "receiptId" not in openapi_503("/v1/identify")
        assert openapi_503("/v1/checkout").endswith("retry with the same body and receiptId")
        # served again once the agent is free
        assert client.get("/v1/status").status == 200
        assert client.post("/v1/identify", raw=padded).status == 200
    finally:
        client.close()


def test_the_door_and_its_document_name_the_same_id_for_every_call() -> None:
    """The 503's words (`_retry`) and `/openapi.json`'s description of each call's 503
    come from one table: an id in one is the id in the other, and a call without one in
    the document has none in its answer."""
    for call in http_api.CALLS:
        said = http_api._retry(call)
        described = openapi_503(call.path, call.method.lower())
        if said == "retry":
            assert "Id" not in described, (call.path, described)
        else:
            assert said.removeprefix("retry with the same ") in described, (call.path, said)
    assert http_api._retry(next(c for c in http_api.CALLS if c.rpc == "Refund")) == (
        "retry with the same refundId"
    )


# ---------------------------------------------------------------- 2. the chunk watchdog

LINE_256_KBIT = 32_000  # bytes a second
# TCP/IP headers (52 bytes a 1448-byte segment), TLS records, HTTP/2 frames, gRPC's prefix
# and the chunk's header: what a line carries besides a chunk's data, at most this share
FRAMING = 0.05


def limit_after(size: int, idle_s: float = 5.0) -> float:
    """The time the watchdog gives the next chunk after one of `size` bytes."""
    stand_in = SimpleNamespace(cancel=lambda: None)  # never cancelled: read at once
    watchdog = _Watchdog(stand_in, idle_s, first_s=120.0)
    try:
        watchdog.feed(size)
        return watchdog.limit
    finally:
        watchdog.stop()


@pytest.mark.parametrize("size", [CHUNK_BYTES, MAX_CHUNK], ids=["256KiB", "1MiB"])
def test_a_chunk_is_given_what_a_256_kbit_line_needs_for_it(size: int) -> None:
    """The hub's chunk (256 KiB since session 59) and an earlier hub's (1 MiB): the next
    is waited for at least as long as a 256 kbit/s line needs for one as big with its
    framing, 8.6 s and 34.4 s. Fails before: 8 s and 32 s, `SLOWEST_LINK` (32 KiB/s) for
    the data alone, so such a line's pull was cancelled as stalled every few chunks."""
    needs = size * (1 + FRAMING) / LINE_256_KBIT
    assert limit_after(size) >= needs


def test_a_small_chunk_is_given_the_call_timeout_and_a_dead_line_is_still_noticed() -> None:
    """What the rule keeps: a delta of a few KB, or a header, leaves the next chunk the
    call timeout (`hub.call_timeout_ms`); a 256 KiB chunk is not waited for much longer
    than 256 kbit/s needs (a dead line is still cancelled within seconds of that)."""
    assert 5.0 <= limit_after(0) < 5.2
    assert 5.0 <= limit_after(3_000) < 5.2
    assert limit_after(CHUNK_BYTES) <= CHUNK_BYTES * (1 + FRAMING) / LINE_256_KBIT + 5.0
    assert limit_after(CHUNK_BYTES, idle_s=60.0) <= 60.0 + 8.5


# ---------------------------------------------------------------- checked: int64's edge


def test_hub_receipts_pages_at_int64s_edge_on_both_stores(hub_store_factory: Any) -> None:
    """What `hub receipts` and a till's ListTransactions read (`list_transactions`), with
    the `--since`/`--limit` review 59 (mut59b) now lets through at their top, 2^63 − 1, on
    SQLite and on PostgreSQL: seqs at the edge stored and paged, one more than the limit
    fetched without passing int64 (a sound reading: this passes before)."""
    store = hub_store_factory()
    import_doc(store, sample_master_data())
    store.publish(NOW, 7 * 86400.0)
    seqs = [1, 2, INT64_MAX - 1, INT64_MAX]
    assert store.ingest("a", "b1", [checkout(seq) for seq in seqs], NOW).count("STORED") == 4

    def page(since: int, limit: int) -> tuple[list[int], bool]:
        reply = list_transactions(store, "a", since, limit)
        return [t.seq for t in reply.transactions], reply.more

    assert page(0, INT64_MAX) == (seqs, False)
    assert page(0, 0) == (seqs, False)
    assert page(2, 1) == ([INT64_MAX - 1], True)
    assert page(INT64_MAX - 1, 1) == ([INT64_MAX], False)
    assert page(INT64_MAX - 1, INT64_MAX) == ([INT64_MAX], False)
    assert page(INT64_MAX, INT64_MAX) == ([], False)
