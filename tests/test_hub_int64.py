"""The hub adds up what tills send and what the retailer imports: sums past int64.

A till refuses a receipt that would take its own view of a balance past int64
(tests/test_input_limits.py), but the hub adds every till's points to the imported
balance. What no snapshot, hold or answer could carry is refused where it enters: an
import's row, an UNKNOWN card's figures, an authorisation. Once on SQLite, once on
PostgreSQL (`make test-pg`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.errors import InputError
from tillpoint.agent.limits import INT64_MAX
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.hub_import import read_file
from tillpoint.sync.hub_store import ImportRefused, TxIn, Unsynced
from tillpoint.sync.loopback import LoopbackHub, import_doc, receipt, sample_master_data
from tillpoint.v1 import tillpoint_pb2 as pb

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
WEEK = 7 * 86400.0
LATER = (NOW + timedelta(days=3)).isoformat()


@pytest.fixture()
def store(hub_store_factory: Any) -> Any:
    return hub_store_factory()


def near_the_limit(balance: int = INT64_MAX - 15) -> dict[str, Any]:
    data = sample_master_data()
    data["customers"][0]["balancePoints"] = balance  # c-1
    return data


def sale(device: str, seq: int, points: int, card: str = "", result: Any = None) -> TxIn:
    """A checkout of c-1 (or, with `card`, of an UNKNOWN card) that moves `points`."""
    return TxIn(
        device,
        seq,
        "CHECKOUT",
        NOW.isoformat(),
        "" if card else "c-1",
        card,
        json.dumps({"receiptId": f"{device}-{seq}"}),
        json.dumps(result or {}),
        0 if card else points,
        0,
        "",
    )


@pytest.mark.parametrize("shape", ["json", "jsonl"])
@pytest.mark.parametrize(
    ("row", "says"),
    [
        (
            {"balancePoints": INT64_MAX, "pending": [{"points": 1, "activatesAt": LATER}]},
            "balancePoints and the pending points add up",
        ),
        (
            {"pending": [{"points": INT64_MAX, "activatesAt": LATER}] * 2},
            "balancePoints and the pending points add up",
        ),
        (
            {"balancePoints": -INT64_MAX - 1, "pending": [{"points": -1, "activatesAt": LATER}]},
            "balancePoints and the pending points add up",
        ),
        (
            {
                "balancePoints": 10,
                "expiring": [{"points": INT64_MAX, "expiresAt": LATER}] * 2,
            },
            "the expiring points add up",
        ),
    ],
)
def test_an_imported_customer_whose_points_add_up_past_int64_is_refused(
    store: Any, tmp_path: Path, shape: str, row: dict[str, Any], says: str
) -> None:
    """Each figure fits; the hub would serve their sum (a pending part due joins the
    balance, parts due at one moment are one), and every till would refuse that snapshot."""
    customer = {"id": "c-9", **row}
    if shape == "json":
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"customers": [customer]}))
    else:
        path = tmp_path / "bad.jsonl"
        # a run of good rows around it: the bulk path validates a run in one call
        good = [{"customer": {"id": f"g-{i}", "balancePoints": i}} for i in range(300)]
        rows = [*good[:150], {"customer": customer}, *good[150:]]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ImportRefused, match=f"customer c-9: {says} past a signed 64-bit"):
        store.import_rows(read_file(path))
    assert store.draft_size() == 0


def test_the_limit_itself_imports(store: Any, tmp_path: Path) -> None:
    path = tmp_path / "edge.json"
    top = {"id": "c-9", "balancePoints": INT64_MAX - 1}
    top["pending"] = [{"points": 1, "activatesAt": LATER}]  # type: ignore[assignment]
    bottom = {"id": "c-8", "balancePoints": -INT64_MAX - 1}  # what comes in only raises it
    bottom["pending"] = [{"points": 5, "activatesAt": LATER}]  # type: ignore[assignment]
    path.write_text(json.dumps({"customers": [top, bottom]}))
    assert store.import_rows(read_file(path)).by_kind == {"customer": 2}


@pytest.mark.parametrize(
    ("figure", "value"),
    [("earnedPoints", str(INT64_MAX + 1)), ("earnedPoints", 1.5), ("earnedPoints", "many")],
)
def test_an_unknown_cards_figure_past_int64_is_rejected_not_stored(
    store: Any, figure: str, value: Any
) -> None:
    """An UNKNOWN card's points are read from the result (its deltas are 0): a till never
    sends one past int64, a broken one might. Stored, it failed every retry of the batch
    (SQLite: "Python int too large", PostgreSQL: "bigint out of range") and the till's
    outbox stuck behind it; it is set aside (REJECTED) and the batch goes on."""
    import_doc(store, sample_master_data())
    store.publish(NOW, WEEK)
    bad = sale("a", 1, 0, card="2770000000055", result={figure: value})
    result = store.ingest("a", "b-1", [bad, sale("a", 2, 5)], NOW)
    assert [(r.seq, r.outcome) for r in result.results] == [(1, "REJECTED"), (2, "STORED")]
    assert figure in result.results[0].reason
    assert result.acked_through == 2
    assert store.balance("c-1", NOW).available == 1200 + 5


def test_a_refund_of_an_unknown_card_past_int64_is_rejected(store: Any) -> None:
    import_doc(store, sample_master_data())
    store.publish(NOW, WEEK)
    refund = TxIn(
        "a",
        1,
        "REFUND",
        NOW.isoformat(),
        "",
        "2770000000055",
        json.dumps({"receiptId": "a-0", "refundId": "f-1"}),
        json.dumps({"returnedPoints": str(INT64_MAX), "takenBackPoints": str(-INT64_MAX)}),
        0,
        0,
        "",
    )
    result = store.ingest("a", "", [refund], NOW)
    assert result.results[0].outcome == "REJECTED"
    assert "does not fit" in result.results[0].reason


def test_an_authorisation_past_int64_is_refused_and_holds_nothing(store: Any) -> None:
    """Two tills each stayed inside int64; the hub's sum did not (MAX − 15 + 12 + 12).
    No hold could be stored or answered: refused (INVALID_ARGUMENT at the server) before
    any hold is written, in either path, and the unsynced spend's hold is rolled back."""
    import_doc(store, near_the_limit())
    store.publish(NOW, WEEK)
    store.ingest("a", "", [sale("a", 1, 12)], NOW)
    store.ingest("b", "", [sale("b", 1, 12)], NOW)
    assert store.balance("c-1", NOW).available == INT64_MAX + 9  # the hub's own count
    with pytest.raises(
        InputError, match=r"c-1.s points at the hub \(\d+\) do not fit in a signed 64-bit"
    ):
        store.authorise("a", "r-1", "c-1", 5, NOW, [], NOW, 600)
    unsynced = [Unsynced(2, "r-spent", -3), Unsynced(3, "r-earned", 1)]
    with pytest.raises(InputError, match="signed 64-bit"):
        store.authorise("a", "r-2", "c-1", 5, NOW, unsynced, NOW, 600)
    assert store.balance("c-1", NOW).held == 0


def test_an_authorisation_at_the_limit_is_granted(store: Any) -> None:
    import_doc(store, near_the_limit(INT64_MAX - 24))
    store.publish(NOW, WEEK)
    store.ingest("a", "", [sale("a", 1, 12)], NOW)
    store.ingest("b", "", [sale("b", 1, 12)], NOW)
    granted = store.authorise("a", "r-1", "c-1", 5, NOW, [], NOW, 600)
    assert (granted.authorised, granted.live_balance) == (5, INT64_MAX)


def test_the_hub_answers_such_an_authorisation_invalid_argument(tmp_path: Path) -> None:
    """Over the wire: INVALID_ARGUMENT with the reason (SQLite answered UNKNOWN "Value out
    of range" after writing the hold; PostgreSQL UNAVAILABLE, which reads as a hub down),
    and the till prices the redemption with its offline limit."""
    hub = LoopbackHub(tmp_path / "hub", data=near_the_limit())
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        for device in ("till-a", "till-b"):
            hub.store.ingest(device, "", [sale(device, 1, 12)], NOW)
        till.agent.load_snapshot(hub.store.snapshot_doc(1, 0))
        request = pb.AuthorizeRedemptionRequest(
            device_id="till-1", receipt_id="r-1", customer_id="c-1", points=5, at=NOW.isoformat()
        )
        with pytest.raises(grpc.RpcError) as err:
            till.link.stub.AuthorizeRedemption(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "signed 64-bit" in str(err.value.details())
        assert hub.store.balance("c-1", NOW).held == 0
        paid = till.agent.checkout(receipt_from_json(receipt("r-2", "2770000000017", redeem=5)))
        assert (paid.mode, paid.redeemed_points) == ("OFFLINE", 5)
    finally:
        till.stop()
        hub.stop()
