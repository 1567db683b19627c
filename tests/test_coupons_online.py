"""Online coupon authorisation (docs/CONTRACT.md §13, §11): the hub holds each applied code
with the receipt's redemption, so two tills cannot use one code; a real hub on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.hub_sqlite import SqliteHubStore
from tillpoint.sync.hub_store import TxIn
from tillpoint.sync.loopback import LoopbackHub, Till, import_doc, sample_master_data
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import answered, enrolled_till
from .test_coupons import COUPONS, SORRY, receipt, verdicts

APPLIED = ("APP555", "APPLIED", "")
USED = ("APP555", "REJECTED", "ALREADY_USED")


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    data = sample_master_data() | {"offers": [SORRY], "coupons": COUPONS}
    hub = LoopbackHub(tmp_path / "hub", data=data)
    yield hub
    hub.stop()


def enrolled(hub: LoopbackHub, tmp_path: Path, name: str) -> Till:
    return enrolled_till(
        hub, tmp_path / name, name, timings=answered()
    )  # the hub answers in time (flake44)


def test_two_tills_one_code_online_the_second_gets_already_used(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    a, b = enrolled(hub, tmp_path, "a"), enrolled(hub, tmp_path, "b")
    try:
        # 2 × 89.90 = 179.80, the sorry bonus takes 20.00 off each unit: 139.80 to pay; no
        # points redeemed, yet the code is authorised by the hub as a redemption would be
        first = a.agent.checkout(receipt_from_json(receipt("a-1", "app-555")))
        assert (first.mode, verdicts(first)) == ("ONLINE", [APPLIED])
        assert first.payable_minor == 13980
        # b has not seen a's transaction (nothing was pushed): the hub's hold answers
        second = b.agent.checkout(receipt_from_json(receipt("b-1", "APP 555")))
        assert second.mode == "ONLINE"
        assert verdicts(second) == [USED]
        assert second.payable_minor == 17980  # priced again without it
        assert [line.get("offerId") for line in second.to_json()["lines"]] != ["o-sorry"]
        # quote equals checkout: a's till sees its own use locally
        assert verdicts(a.agent.quote(receipt_from_json(receipt("a-2", "APP555")))) == [USED]
    finally:
        a.stop()
        b.stop()


def test_a_held_code_is_given_back_by_cancel_and_settled_by_the_transaction(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    a, b = enrolled(hub, tmp_path, "a"), enrolled(hub, tmp_path, "b")
    try:
        held = a.agent.hold(receipt_from_json(receipt("a-1", "APP555")))
        assert (held.state, verdicts(held)) == ("HELD", [APPLIED])
        assert verdicts(b.agent.checkout(receipt_from_json(receipt("b-1", "APP555")))) == [USED]
        a.agent.cancel("a-1")  # released at the hub at once
        assert verdicts(b.agent.hold(receipt_from_json(receipt("b-2", "APP555")))) == [APPLIED]
        assert verdicts(a.agent.checkout(receipt_from_json(receipt("a-3", "APP555")))) == [USED]
        b.agent.confirm("b-2")
        # b's transaction reaches the hub: the code is used there for good (no hold left)
        hub.store.ingest("b", "", outbox_of(b), datetime.now(UTC))
        assert verdicts(a.agent.checkout(receipt_from_json(receipt("a-4", "APP555")))) == [USED]
        assert hub.store.coupon_conflicts() == []
    finally:
        a.stop()
        b.stop()


def test_offline_the_till_rules_stand_and_the_hub_records_one_conflict(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    a, b = enrolled(hub, tmp_path, "a"), enrolled(hub, tmp_path, "b")
    try:
        hub.stop()
        one = a.agent.checkout(receipt_from_json(receipt("a-1", "APP555")))
        two = b.agent.checkout(receipt_from_json(receipt("b-1", "APP555")))
        assert [(r.mode, verdicts(r)) for r in (one, two)] == [("OFFLINE", [APPLIED])] * 2
        hub.restart()
        grpc.channel_ready_future(a.link.channel).result(timeout=10)
        for till in (a, b):
            hub.store.ingest(till.device_id, "", outbox_of(till), datetime.now(UTC))
        conflicts = hub.store.coupon_conflicts()
        assert [(c["code"], c["deviceId"], c["firstDeviceId"]) for c in conflicts] == [
            ("APP555", "b", "a")
        ]
        # online again: the hub answers that the code is used
        assert verdicts(a.agent.checkout(receipt_from_json(receipt("a-2", "APP555")))) == [USED]
    finally:
        a.stop()
        b.stop()


def outbox_of(till: Till) -> list[TxIn]:
    from .test_coupons import outbox

    return outbox(till.data_dir)


NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


def test_hub_store_coupon_holds_expire_and_are_replaced(tmp_path: Path) -> None:
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        import_doc(store, sample_master_data() | {"offers": [SORRY], "coupons": COUPONS})
        hold: Any = store.hold_coupons
        assert hold("a", "r-1", "c-1", ["APP555", "SORRY7K2Q9"], NOW, 60) == []
        assert hold("b", "r-2", "c-1", ["APP555"], NOW, 60) == ["APP555"]
        # the same receipt asking again keeps its codes; the one it dropped is free
        assert hold("a", "r-1", "c-1", ["APP555"], NOW, 60) == []
        assert hold("b", "r-2", "c-1", ["SORRY7K2Q9"], NOW, 60) == []
        # a hold past its time holds nothing
        assert hold("b", "r-3", "c-1", ["APP555"], NOW + timedelta(seconds=61), 60) == []
        assert store.release("b", "r-3") is True
        assert hold("a", "r-4", "c-1", ["APP555"], NOW + timedelta(seconds=62), 60) == []
    finally:
        store.close()


def test_the_hub_refuses_too_many_or_empty_codes(hub: LoopbackHub, tmp_path: Path) -> None:
    a = enrolled(hub, tmp_path, "a")
    try:
        for codes in (["X1"] * 101, ["APP555", " - "], ["Y" * 129]):
            request = pb.AuthorizeRedemptionRequest(
                device_id="a",
                receipt_id="r-1",
                customer_id="c-1",
                at=datetime.now(UTC).isoformat(),
                coupon_codes=codes,
            )
            with pytest.raises(grpc.RpcError) as err:
                a.link.stub.AuthorizeRedemption(request, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "couponCodes" in (err.value.details() or "")
        # a sound request with codes and no points: nothing granted, the codes held
        request = pb.AuthorizeRedemptionRequest(
            device_id="a",
            receipt_id="r-1",
            customer_id="c-1",
            at=datetime.now(UTC).isoformat(),
            coupon_codes=["app-555"],
        )
        reply = a.link.stub.AuthorizeRedemption(request, timeout=5)
        assert (reply.authorized_points, list(reply.used_coupons)) == (0, [])
        request.receipt_id = "r-2"
        assert list(a.link.stub.AuthorizeRedemption(request, timeout=5).used_coupons) == ["APP555"]
    finally:
        a.stop()
