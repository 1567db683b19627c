"""Review 31 (hub31): the hub's doors and its two stores (docs/CONTRACT.md §9): a pushed
transaction the hub cannot read is set aside alone, never a failure of the whole push on
either store, and what the hub trusts of an enrolled till's unsent sales."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.sync.loopback import LoopbackHub
from tillpoint.v1 import tillpoint_pb2 as pb

from .test_hub_security import identity, stub
from .test_review30_rev30b import ask
from .test_review30_sync30 import expiring_hub

TIMEOUT = 10
BEFORE_MIDNIGHT = "2026-11-30T23:50:00+03:00"  # Boris's 200 expiring points still count


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)],
)
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LoopbackHub]:
    store = None
    if request.param == "postgresql":
        store = str(request.getfixturevalue("pg_url"))
    hub = expiring_hub(tmp_path / "hub", store)
    yield hub
    hub.stop()


def pushed(hub: LoopbackHub, *txs: pb.Transaction) -> Any:
    me = identity(hub, "till-1", enroll=True)
    s = stub(hub, key=me.key_pem, cert=me.cert_pem)
    ack = s.PushTransactions(
        pb.TransactionBatch(device_id="till-1", transactions=list(txs)), timeout=TIMEOUT
    )
    listed = s.ListTransactions(pb.ListTransactionsRequest(device_id="till-1"), timeout=TIMEOUT)
    return ack, listed


def checkout(seq: int, request_json: str) -> pb.Transaction:
    return pb.Transaction(
        device_id="till-1",
        seq=seq,
        kind=pb.CHECKOUT,
        at="2026-11-30T20:00:00Z",
        request_json=request_json,
        result_json="{}",
    )


@pytest.mark.parametrize(
    ("request_json", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"receiptId": "\\ud800"}', "lone UTF-16 surrogate"),
        ('{"receiptId": "r-1", "refundId": "x", "lines": [{"sku": "\\udc00"}]}', "surrogate"),
    ],
    ids=["nested", "surrogate-id", "surrogate-deep"],
)
def test_a_transaction_the_hub_cannot_read_is_set_aside_alone(
    hub: LoopbackHub, request_json: str, reason: str
) -> None:
    """docs/CONTRACT.md §9: a transaction the hub cannot read is REJECTED and set aside,
    and the device's progress goes on. A request nested too deeply for Python's reader
    (RecursionError) and one holding an escaped lone UTF-16 surrogate (no UTF-8 text, so
    no store's text column, holds one) made the whole push fail: gRPC UNKNOWN with a
    traceback in the hub's log, the batch and every later one refused for good (the
    till's outbox blocked behind it)."""
    ack, listed = pushed(hub, checkout(1, request_json))
    assert [(r.seq, r.outcome) for r in ack.results] == [(1, pb.TX_REJECTED)]
    assert reason in ack.results[0].reason
    assert "\n" not in ack.results[0].reason
    assert (ack.acked_through_seq, ack.rejected) == (1, 1)
    assert list(listed.transactions) == []  # nothing stored, nothing counted


def test_an_emoji_written_as_a_surrogate_pair_is_welcome(hub: LoopbackHub) -> None:
    """docs/CONTRACT.md §10: an escaped pair ("\\ud83d\\ude00") is one character."""
    ack, listed = pushed(hub, checkout(1, '{"receiptId": "r-\\ud83d\\ude00"}'))
    assert [(r.seq, r.outcome) for r in ack.results] == [(1, pb.TX_STORED)]
    assert [t.receipt_id for t in listed.transactions] == ["r-\U0001f600"]


@pytest.mark.parametrize(
    ("spent", "live"),
    [
        (10, 100),  # earned 0: the 10 came out of the 200 gone at midnight
        (250, 290),  # earned 240: 50 of the 100 left, then the 240 earned
        (301, 290),  # one point over the 300: the wallet is -1 at 23:50, then +291
    ],
)
def test_an_unsent_sales_spent_is_counted_as_the_sale_will_be_not_capped(
    hub: LoopbackHub, spent: int, live: int
) -> None:
    """docs/CONTRACT.md §9, docs/DECISIONS.md (review 31): an enrolled till's unsent
    sale (`UnsyncedPoints`: its net `points` and the `spent` part of them) counts at the
    hub as the sale itself will once pushed, its spend replayed at its time: no cap by
    what the customer had then. A spend over the balance (two tills offline on the same
    points) is what the pushed sale's result says too, and the hub counts that as it
    stands; capping it here alone would grant more before the push than after it."""
    me = identity(hub, "till-1", enroll=True)
    s = stub(hub, key=me.key_pem, cert=me.cert_pem)
    unsent = pb.UnsyncedPoints(seq=1, receipt_id="s-1", points=-10, at=BEFORE_MIDNIGHT, spent=spent)
    reply = s.AuthorizeRedemption(ask("r-1", 1000, unsent), timeout=TIMEOUT)
    assert (reply.authorized_points, reply.live_balance) == (live, live)


def test_hub_rpcs_with_bad_input_answer_invalid_argument_not_unknown(hub: LoopbackHub) -> None:
    """docs/CONTRACT.md §9: bad input at the hub's doors is INVALID_ARGUMENT with one line."""
    me = identity(hub, "till-1", enroll=True)
    s = stub(hub, key=me.key_pem, cert=me.cert_pem)
    bad = [
        lambda: s.ListTransactions(
            pb.ListTransactionsRequest(device_id="till-1", since_seq=-(2**63)), timeout=TIMEOUT
        ),
        lambda: s.ReleaseRedemption(
            pb.ReleaseRedemptionRequest(device_id="till-1", receipt_id=""), timeout=TIMEOUT
        ),
        lambda: s.AuthorizeRedemption(ask("r-1", -(2**63)), timeout=TIMEOUT),
    ]
    for call in bad:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "\n" not in err.value.details()  # type: ignore[attr-defined]


NUL_OR_HUGE = {
    "receipt-nul": {"receipt_id": "r\x001"},
    "receipt-huge": {"receipt_id": "r" * 100_000},
    "customer-nul": {"customer_id": "c-2\x00"},
    "customer-huge": {"customer_id": "c" * 100_000},
    "unsent-receipt-nul": {"unsynced": [pb.UnsyncedPoints(seq=1, receipt_id="s\x001", points=-5)]},
    "unsent-receipt-huge": {
        "unsynced": [pb.UnsyncedPoints(seq=1, receipt_id="s" * 100_000, points=-5)]
    },
}


@pytest.mark.parametrize("fields", NUL_OR_HUGE.values(), ids=NUL_OR_HUGE.keys())
def test_an_authorisation_with_an_id_no_store_keeps_is_invalid_argument(
    hub: LoopbackHub, fields: dict[str, Any]
) -> None:
    """docs/CONTRACT.md §9, §10: an id a till never sends (a NUL, which PostgreSQL's text
    refuses; more than the 128 characters a till's ids have, more than a PostgreSQL index
    entry holds) is refused at the hub's door, INVALID_ARGUMENT in one line, nothing
    held: the next request for the customer is granted the whole balance."""
    me = identity(hub, "till-1", enroll=True)
    s = stub(hub, key=me.key_pem, cert=me.cert_pem)
    request = ask("r-1", 50)
    for name, value in fields.items():
        if name == "unsynced":
            request.unsynced.extend(value)
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.RpcError) as err:
        s.AuthorizeRedemption(request, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "\n" not in err.value.details()  # type: ignore[attr-defined]
    reply = s.AuthorizeRedemption(ask("r-2", 1000), timeout=TIMEOUT)
    assert reply.live_balance == 100  # after midnight: the 100 that never expire


@pytest.mark.parametrize("receipt_id", ["r\x001", "r" * 100_000], ids=["nul", "huge"])
def test_a_release_of_an_id_no_store_keeps_is_invalid_argument(
    hub: LoopbackHub, receipt_id: str
) -> None:
    """docs/CONTRACT.md §9: as for AuthorizeRedemption."""
    me = identity(hub, "till-1", enroll=True)
    s = stub(hub, key=me.key_pem, cert=me.cert_pem)
    with pytest.raises(grpc.RpcError) as err:
        s.ReleaseRedemption(
            pb.ReleaseRedemptionRequest(device_id="till-1", receipt_id=receipt_id),
            timeout=TIMEOUT,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


@pytest.mark.parametrize("batch_id", ["b\x001", "b" * 100_000], ids=["nul", "huge"])
def test_a_push_with_a_batch_id_no_store_keeps_is_invalid_argument(
    hub: LoopbackHub, batch_id: str
) -> None:
    """docs/CONTRACT.md §9: a till's batch id is a short hash; another is refused whole
    (INVALID_ARGUMENT, nothing stored), never a failure of the store (UNKNOWN)."""
    me = identity(hub, "till-1", enroll=True)
    s = stub(hub, key=me.key_pem, cert=me.cert_pem)
    batch = pb.TransactionBatch(
        device_id="till-1", batch_id=batch_id, transactions=[checkout(1, '{"receiptId": "r-1"}')]
    )
    with pytest.raises(grpc.RpcError) as err:
        s.PushTransactions(batch, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    listed = s.ListTransactions(pb.ListTransactionsRequest(device_id="till-1"), timeout=TIMEOUT)
    assert list(listed.transactions) == []


def test_hub_migrate_refuses_while_a_hub_has_the_database_open(pg_url: str) -> None:
    """docs/HUB.md, Migrations: a hub is stopped before `hub migrate`. A migrate run
    while a hub (or any hub command) has the PostgreSQL database open changed the schema
    under it (the running hub checked the schema only at its start, and went on with its
    own release's SQL); it is refused now, in one line naming the cause, and applies
    nothing (here the last step's DDL ran under the open store). A migrate with nothing
    to apply is not refused (it changes nothing)."""
    import psycopg
    from tillpoint.agent.errors import StorageError
    from tillpoint.sync.hub_postgres import SCHEMA_VERSION, PostgresHubStore, migrate

    store = PostgresHubStore(pg_url, migrate_schema=True)
    try:
        assert migrate(pg_url) == []  # up to date: nothing to apply, nothing refused
        with psycopg.connect(pg_url, autocommit=True) as conn:  # a release behind
            conn.execute("DELETE FROM schema_migrations WHERE version = %s", (SCHEMA_VERSION,))
        with pytest.raises(StorageError) as err:
            migrate(pg_url)
        assert "\n" not in err.value.message
        assert "is open" in err.value.message and "stop" in err.value.message
        with psycopg.connect(pg_url, autocommit=True) as conn:
            top = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        assert top is not None and top[0] == SCHEMA_VERSION - 1  # nothing applied
    finally:
        store.close()
