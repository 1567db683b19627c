"""The receipt's life at the till (the contract §11): hold, confirm, cancel, expiry, conflicts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent import ledger
from tillpoint.agent.errors import Conflict, InputError, NotFound, Refused
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.server import start_hold_sweeper
from tillpoint.agent.service import Agent
from tillpoint.agent.wire import checkout_message, json_of, to_message
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, PROGRAM, ManualClock, posagent_stub, receipt, snapshot

TIMEOUT = 5
BORIS = "2770000000024"  # 80 points, base tier
BIG = [{"sku": "4601234000017", "qty": "1", "priceMinor": 100_000}]  # room for 300 points
OFFER = {
    "id": "o-print",
    "campaignId": "camp-p",
    "customerId": "c-a",
    "kind": "PERCENT_OFF",
    "skus": ["4601234000024"],
    "value": "20",
    "validFrom": "2026-11-01T00:00:00+03:00",
    "validTo": "2026-11-30T23:59:59+03:00",
    "rank": 1,
    "printable": True,
    "printText": "−20% на хлеб",
}


@pytest.fixture
def till(tmp_path: Path, clock: ManualClock) -> Iterator[Agent]:
    a = Agent(tmp_path / "data", "till-1", clock=clock)
    program = {**PROGRAM, "holdTtlSeconds": 600, "offlineRedeemLimitPoints": 50}
    a.load_snapshot(snapshot(program=program, offers=[OFFER]))
    yield a
    a.close()


def count(agent: Agent, table: str) -> int:
    return int(agent._ledger.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def outbox(agent: Agent) -> list[dict[str, Any]]:
    """The outbox as the uploader reads it (the texts put back from the receipt's row)."""
    return [
        json.loads(row.payload)
        for row in ledger.outbox_batch(agent._ledger, agent.device_id, 1_000_000)
    ]


def test_hold_reserves_and_confirm_commits_exactly_the_held_figures(
    till: Agent, clock: ManualClock
) -> None:
    before = till.balance("2770000000017")
    held = till.hold(receipt_from_json(receipt(redeemPoints=40)))
    assert held.state == "HELD"
    assert held.hold_expires_at == (clock.now + timedelta(seconds=600)).isoformat()
    assert held.redeemed_points == 40 and held.earned_points > 0
    assert held.to_json()["printedOffers"] == []  # nothing prints before Confirm
    # earns and spends nothing yet, journals nothing
    assert till.balance("2770000000017") == before
    assert count(till, "receipts") == count(till, "outbox") == count(till, "print_jobs") == 0

    # the program changes between Hold and Confirm: the held figures stand
    program = {**PROGRAM, "holdTtlSeconds": 600, "tiers": [{"code": "gold", "accrualPercent": "1"}]}
    till.load_snapshot(snapshot(version=2, program=program, offers=[OFFER]))
    clock.advance(60)
    done = till.confirm("r1", "FD-0001")
    assert done.state == "CONFIRMED" and "holdExpiresAt" not in done.to_json()
    for key in ("lines", "totalMinor", "discountMinor", "redeemedPoints", "earnedPoints"):
        assert done.to_json()[key] == held.to_json()[key]
    assert done.to_json()["balance"] == held.to_json()["balance"]
    assert done.to_json()["printedOffers"] == ["o-print"]
    assert count(till, "print_jobs") == 1
    (tx,) = outbox(till)
    assert (tx["deviceId"], tx["seq"], tx["kind"]) == ("till-1", 1, "CHECKOUT")
    assert tx["fiscalDocument"] == "FD-0001"
    assert tx["pointsDeltaAvailable"] == -40 + held.earned_points
    assert till.balance("2770000000017").to_json() == held.to_json()["balance"]

    # idempotent: Confirm, Hold and Checkout of the same receipt return the commit
    assert till.confirm("r1", "FD-0001") == done
    assert till.confirm("r1") == done
    assert till.hold(receipt_from_json(receipt(redeemPoints=40))) == done
    assert till.checkout(receipt_from_json(receipt(redeemPoints=40))) == done
    assert count(till, "outbox") == 1 and count(till, "print_jobs") == 1
    with pytest.raises(Refused, match="use a refund"):
        till.cancel("r1")
    # a confirmed receipt refunds like any other
    refund = {"refundId": "rf1", "receiptId": "r1", "at": "2026-11-24T12:00:00+03:00"}
    back = till.refund(
        refund_from_json({**refund, "lines": [{"sku": "4601234000017", "qty": "2"}]})
    )
    assert back.returned_points == 40 and back.taken_back_points == held.earned_points


def test_the_same_receipt_id_with_another_body_is_a_conflict(till: Agent) -> None:
    held = till.hold(receipt_from_json(receipt()))
    assert till.hold(receipt_from_json(receipt())) == held  # a retry
    same = [{"priceMinor": "8990", "qty": "2.000", "sku": "4601234000017"}]
    assert (
        till.hold(receipt_from_json(receipt(lines=same))) == held
    )  # the same receipt, written otherwise
    with pytest.raises(Conflict, match="another body"):
        till.hold(receipt_from_json(receipt(redeemPoints=10)))
    with pytest.raises(Conflict):
        till.checkout(receipt_from_json(receipt(card=BORIS)))
    assert count(till, "receipt_life") == 1 and count(till, "outbox") == 0

    done = till.checkout(receipt_from_json(receipt("r2")))
    assert done.state == "CONFIRMED"
    assert till.checkout(receipt_from_json(receipt("r2"))) == done
    with pytest.raises(Conflict):
        till.checkout(receipt_from_json(receipt("r2", lines=BIG)))
    with pytest.raises(Conflict):
        till.hold(receipt_from_json(receipt("r2", lines=BIG)))
    assert count(till, "outbox") == 1


def test_a_receipt_committed_before_receipts_had_a_life_is_still_checked(till: Agent) -> None:
    done = till.checkout(receipt_from_json(receipt("old")))
    till._ledger.execute("DELETE FROM receipt_life")  # as an older agent stored it
    assert till.checkout(receipt_from_json(receipt("old"))) == done
    with pytest.raises(Conflict):
        till.checkout(receipt_from_json(receipt("old", redeemPoints=5)))
    assert till.confirm("old") == done
    with pytest.raises(Refused, match="use a refund"):
        till.cancel("old")


def test_cancel_releases_the_hold_and_is_idempotent(till: Agent) -> None:
    held = till.hold(receipt_from_json(receipt(card=BORIS, redeemPoints=-1, lines=BIG)))
    assert held.redeemed_points == 50  # the offline limit of the day
    cancelled = till.cancel("r1")
    assert cancelled.state == "CANCELLED" and "holdExpiresAt" not in cancelled.to_json()
    assert cancelled.redeemed_points == 50  # what was held; none of it happened
    assert till.cancel("r1") == cancelled
    assert (
        till.hold(receipt_from_json(receipt(card=BORIS, redeemPoints=-1, lines=BIG))) == cancelled
    )
    # the contract's words (§11) for a cancelled hold as for an expired one
    with pytest.raises(
        Refused,
        match=r"^hold expired: price the receipt again"
        r" \(r1 was cancelled: under a new receiptId\)$",
    ):
        till.confirm("r1")
    with pytest.raises(Refused, match="cancelled"):
        till.checkout(receipt_from_json(receipt(card=BORIS, redeemPoints=-1, lines=BIG)))
    # released: the next receipt gets the whole limit again
    assert (
        till.hold(
            receipt_from_json(receipt("r2", card=BORIS, redeemPoints=-1, lines=BIG))
        ).redeemed_points
        == 50
    )
    assert count(till, "outbox") == 0


def test_unknown_receipt_and_bad_input(till: Agent) -> None:
    with pytest.raises(NotFound):
        till.confirm("nope")
    with pytest.raises(NotFound):
        till.cancel("nope")
    till.hold(receipt_from_json(receipt()))
    with pytest.raises(InputError, match="64"):
        till.confirm("r1", "F" * 65)
    with pytest.raises(InputError):
        till.confirm("")
    assert count(till, "outbox") == 0


def test_holds_expire_release_their_points_and_can_be_held_again(
    till: Agent, clock: ManualClock
) -> None:
    first = till.hold(receipt_from_json(receipt(card=BORIS, redeemPoints=30, lines=BIG)))
    assert first.redeemed_points == 30
    # the offline limit (50) counts the open hold; so does the balance (80)
    assert (
        till.hold(
            receipt_from_json(receipt("r2", card=BORIS, redeemPoints=-1, lines=BIG))
        ).redeemed_points
        == 20
    )
    assert (
        till.quote(
            receipt_from_json(receipt("q", card=BORIS, redeemPoints=-1, lines=BIG))
        ).redeemed_points
        == 0
    )
    clock.advance(599)
    assert till.sweep_holds() == 0
    clock.advance(1)
    assert till.sweep_holds() == 2  # nobody asked: swept
    with pytest.raises(Refused, match="hold expired: price the receipt again"):
        till.confirm("r1")
    # released: a new receipt gets the limit, and the expired one can be held again
    assert (
        till.quote(
            receipt_from_json(receipt("q", card=BORIS, redeemPoints=-1, lines=BIG))
        ).redeemed_points
        == 50
    )
    again = till.hold(receipt_from_json(receipt(card=BORIS, redeemPoints=30, lines=BIG)))
    assert again.state == "HELD"
    assert again.hold_expires_at == (clock.now + timedelta(seconds=600)).isoformat()
    assert till.confirm("r1").redeemed_points == 30
    assert count(till, "outbox") == 1


def test_expired_hold_is_refused_even_before_a_sweep(till: Agent, clock: ManualClock) -> None:
    till.hold(receipt_from_json(receipt()))
    clock.advance(601)
    with pytest.raises(Refused, match="hold expired"):
        till.confirm("r1")
    assert count(till, "receipts") == 0


def test_tillpoint_run_sweeps_expired_holds_without_anyone_asking(
    till: Agent, clock: ManualClock
) -> None:
    from tillpoint.sync.loopback import wait_for

    till.hold(receipt_from_json(receipt(card=BORIS, redeemPoints=30, lines=BIG)))
    stop = start_hold_sweeper(till, every_s=0.02)
    try:
        clock.advance(600)
        state = "SELECT state FROM receipt_life WHERE receipt_id = 'r1'"

        def expired() -> bool:
            # the writer's connection, which the sweeper's thread uses under the lock
            # (review 42: read beside it, two threads used one connection at once)
            with till._lock:
                return bool(till._ledger.execute(state).fetchone() == ("EXPIRED",))

        wait_for(expired, timeout=30)
    finally:
        stop()


def test_held_and_cancelled_results_map_to_the_proto(till: Agent) -> None:
    for result in (
        till.hold(receipt_from_json(receipt())),
        till.cancel("r1"),
        till.checkout(receipt_from_json(receipt("r2"))),
    ):
        assert checkout_message(result) == to_message(json_of(result), pb.CheckoutResult())


def test_cli_hold_confirm_cancel(cli: CLI) -> None:
    assert cli("snapshot", "load", snapshot()).code == 0
    held = cli("hold", receipt(), "--json")
    assert held.code == 0, held.err
    assert held.json()["state"] == "HELD"
    conflict = cli("hold", receipt(redeemPoints=3), "--json")
    assert conflict.code == 2 and "another body" in conflict.err and conflict.out == ""
    done = cli("confirm", "r1", "--fiscal", "FD-7", "--json")
    assert done.code == 0 and done.json()["state"] == "CONFIRMED"
    assert cli("confirm", "r1", "--json").json() == done.json()
    refused = cli("cancel", "r1", "--json")
    assert refused.code == 2 and "use a refund" in refused.err
    assert cli("hold", receipt("r2"), "--json").code == 0
    cancelled = cli("cancel", "r2", "--json")
    assert cancelled.code == 0 and cancelled.json()["state"] == "CANCELLED"
    assert cli("cancel", "zz", "--json").code == 2
    text = cli("hold", receipt("r3"))
    assert text.code == 0 and "HELD until" in text.out


@pytest.fixture
def stub(till: Agent) -> Iterator[pb_grpc.PosAgentStub]:
    with posagent_stub(till) as stub:
        yield stub


def test_grpc_hold_confirm_cancel(stub: pb_grpc.PosAgentStub, clock: ManualClock) -> None:
    request = json_format.ParseDict(receipt(redeemPoints=10), pb.Receipt())
    held = stub.Hold(request, timeout=TIMEOUT)
    assert held.state == pb.HELD and held.hold_expires_at
    assert stub.Hold(request, timeout=TIMEOUT) == held
    other = json_format.ParseDict(receipt(redeemPoints=11), pb.Receipt())
    for call in (stub.Hold, stub.Checkout):
        with pytest.raises(grpc.RpcError) as err:
            call(other, timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    done = stub.Confirm(pb.ConfirmRequest(receipt_id="r1", fiscal_document="FD"), timeout=TIMEOUT)
    assert done.state == pb.CONFIRMED and not done.HasField("hold_expires_at")
    assert done.redeemed_points == held.redeemed_points == 10
    assert stub.Confirm(pb.ConfirmRequest(receipt_id="r1"), timeout=TIMEOUT) == done
    with pytest.raises(grpc.RpcError) as err:
        stub.Cancel(pb.CancelRequest(receipt_id="r1"), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        stub.Confirm(pb.ConfirmRequest(receipt_id="none"), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    stub.Hold(json_format.ParseDict(receipt("r2"), pb.Receipt()), timeout=TIMEOUT)
    cancelled = stub.Cancel(pb.CancelRequest(receipt_id="r2"), timeout=TIMEOUT)
    assert cancelled.state == pb.CANCELLED
    stub.Hold(json_format.ParseDict(receipt("r3"), pb.Receipt()), timeout=TIMEOUT)
    clock.advance(3600)
    with pytest.raises(grpc.RpcError) as err:
        stub.Confirm(pb.ConfirmRequest(receipt_id="r3"), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "hold expired" in (err.value.details() or "")
    again = stub.Quote(request, timeout=TIMEOUT)  # committed: its figures, as a quote
    assert (again.balance, again.lines, again.state) == (done.balance, done.lines, 0)
    fresh = json_format.ParseDict(receipt("r4", redeemPoints=10), pb.Receipt())
    quote = stub.Quote(fresh, timeout=TIMEOUT)
    assert quote.state == pb.RECEIPT_STATE_UNSPECIFIED  # a quote has no state


# ---------------------------------------------------------------- with a real hub


def hub_holds(hub: Any) -> dict[str, tuple[str, int, str]]:
    """receipt_id → (state, points, expires_at) of the hub's holds."""
    with hub.store._read() as conn:
        rows = conn.execute("SELECT receipt_id, state, points, expires_at FROM holds").fetchall()
    return {str(r): (str(s), int(p), str(e)) for r, s, p, e in rows}


def test_hub_holds_follow_the_receipt(tmp_path: Path) -> None:
    """Placed at Hold (for the program's TTL), released at Cancel and at expiry, settled
    by the transaction after Confirm; the fiscal document reaches the hub."""
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data, timings, wait_for
    from tillpoint.sync.loopback import receipt as hub_receipt
    from tillpoint.sync.pull import Puller, cache_version
    from tillpoint.sync.push import Pusher

    data = sample_master_data()
    data["program"]["holdTtlSeconds"] = 120
    hub = LoopbackHub(tmp_path / "hub", data=data)
    clock = ManualClock(datetime.now(UTC))
    slow_ok = timings(redeem_timeout_s=3.0)
    till = hub.till("till-1", tmp_path / "till", start=False, clock=clock, timings=slow_ok)
    other = hub.till("till-2", tmp_path / "till2", start=False, timings=slow_ok)
    try:
        for t in (till, other):
            Puller(t.agent, t.link, t.link.enrollment, call_timeout_s=2).pull()
            wait_for(lambda t=t: cache_version(t.data_dir) == 1)
        card = "2770000000017"  # c-1: 1200 points at the hub
        lines = [{"sku": "4601234000017", "qty": "1", "amountMinor": 500_000}]

        def sale(rid: str, redeem: int) -> dict[str, Any]:
            return hub_receipt(rid, card, at=clock.now, redeem=redeem, lines=lines)

        held = till.agent.hold(receipt_from_json(sale("h-1", 1000)))
        assert (held.mode, held.redeemed_points) == ("ONLINE", 1000)
        state, points, expires = hub_holds(hub)["h-1"]
        assert (state, points) == ("ACTIVE", 1000)
        # held for the program's TTL (and the till's margin), not the hub's own 900 s
        left = datetime.fromisoformat(expires.replace("Z", "+00:00")) - datetime.now(UTC)
        assert timedelta(seconds=120) < left <= timedelta(seconds=180)
        assert other.agent.checkout(receipt_from_json(sale("o-1", 1200))).redeemed_points == 200

        till.agent.cancel("h-1")  # released at the hub at once
        assert "h-1" not in hub_holds(hub)
        assert till.agent.hold(receipt_from_json(sale("h-2", 600))).redeemed_points == 600
        assert hub_holds(hub)["h-2"][:2] == ("ACTIVE", 600)

        clock.advance(121)  # nobody asks: the sweep expires it and releases it
        assert till.agent.sweep_holds() == 1
        assert "h-2" not in hub_holds(hub)

        held = till.agent.hold(receipt_from_json(sale("h-3", 300)))
        assert held.redeemed_points == 300
        done = till.agent.confirm("h-3", "FD-0042")
        assert done.redeemed_points == 300
        assert hub_holds(hub)["h-3"][:2] == ("ACTIVE", 300)  # until its transaction arrives
        Pusher(till.data_dir, "till-1", till.link, call_timeout_s=2).drain()
        assert hub_holds(hub)["h-3"][:2] == ("SETTLED", 300)
        with hub.store._read() as conn:
            fiscal = conn.execute(
                "SELECT fiscal_document FROM transactions WHERE receipt_id = 'h-3'"
            ).fetchone()
        assert fiscal == ("FD-0042",)
        assert hub.store.balance("c-1", datetime.now(UTC)).held == 200  # o-1, not yet sent
    finally:
        till.stop()
        other.stop()
        hub.stop()


def test_a_holds_balance_leaves_out_what_the_cards_other_open_holds_reserve(
    till: Agent, clock: ManualClock
) -> None:
    """Two holds on one card offline: together they never redeem more than the balance, and
    each one's `availablePoints` (and Confirm's) leaves out what the other still reserves."""
    assert till.balance(BORIS).to_json() == {"availablePoints": 80, "pendingPoints": 0}
    first = till.hold(
        receipt_from_json(receipt("h1", card=BORIS, redeemPoints=-1, lines=BIG))
    ).to_json()
    assert first["redeemedPoints"] == 50  # the offline limit
    second = till.hold(
        receipt_from_json(receipt("h2", card=BORIS, redeemPoints=-1, lines=BIG))
    ).to_json()
    assert first["redeemedPoints"] + second["redeemedPoints"] <= 80
    earned = second["earnedPoints"]
    left = 80 - first["redeemedPoints"] - second["redeemedPoints"]
    assert second["balance"]["availablePoints"] == left + earned
    quoted = till.quote(
        receipt_from_json(receipt("q", card=BORIS, redeemPoints=-1, lines=BIG))
    ).to_json()
    assert quoted["redeemedPoints"] == 0
    assert quoted["balance"]["availablePoints"] == 80 - first["redeemedPoints"] + earned
    # Confirm of the second while the first is still held: the first stays reserved
    done = till.confirm("h2").to_json()
    assert done["balance"]["availablePoints"] == left + earned
    # the first confirmed too: the ledger's own balance is what both results said
    assert (
        till.confirm("h1").to_json()["balance"]["availablePoints"]
        == left + earned + first["earnedPoints"]
    )
    assert till.balance(BORIS).available_points == left + earned + first["earnedPoints"]


def test_a_quote_of_a_committed_receipt_answers_what_was_committed(till: Agent) -> None:
    """Priced again, a committed receipt's own spend and earn counted twice in the balance
    a quote shows (1192 after the sale, then 1184 on a quote of it); a quote of its
    receiptId now answers the committed result, and another body is a conflict. A quote
    of a held receipt still prices it, its own hold left out."""
    body = receipt_from_json(receipt(redeemPoints=-1))
    held = till.hold(body)
    quoted = till.quote(body)
    assert quoted.balance == held.balance and quoted.redeemed_points == held.redeemed_points
    confirmed = till.confirm(body.receipt_id)
    again = till.quote(body)
    assert again.balance == confirmed.balance == held.balance
    assert (again.redeemed_points, again.earned_points, again.lines) == (
        confirmed.redeemed_points,
        confirmed.earned_points,
        confirmed.lines,
    )
    # as a quote: nothing printed (§5), no state, device or seq, the quote's display
    assert confirmed.printed_offers and not again.printed_offers
    assert (again.state, again.device_id, again.seq) == (None, None, None)
    assert again.display == quoted.display
    other = till.quote(receipt_from_json(receipt(redeemPoints=0)))  # another body: priced
    assert other.redeemed_points == 0 and other.state is None
    # §17: a trace never changes a figure; the committed receipt is not priced again
    traced = till.quote(receipt_from_json(receipt(redeemPoints=-1, explain=True)))
    assert (traced.balance, traced.lines, traced.payable_minor) == (
        again.balance,
        again.lines,
        again.payable_minor,
    )
    explained = till.checkout(receipt_from_json(receipt("r3", redeemPoints=5, explain=True)))
    assert explained.trace is not None
    kept = till.quote(receipt_from_json(receipt("r3", redeemPoints=5, explain=True)))
    assert kept.trace == explained.trace and kept.balance == explained.balance
    assert till.quote(receipt_from_json(receipt("r3", redeemPoints=5))).trace is None
    sold = till.checkout(receipt_from_json(receipt("r2", redeemPoints=10)))
    quoted_again = till.quote(receipt_from_json(receipt("r2", redeemPoints=10)))
    assert (quoted_again.total_minor, quoted_again.balance) == (sold.total_minor, sold.balance)
