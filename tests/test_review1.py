"""Bugs found in the review of the merged main (hold/confirm meeting balances, upgrades)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from tillpoint.agent.errors import Conflict, Refused
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, PROGRAM, ManualClock, posagent_stub, receipt, snapshot

ANNA = "2770000000017"  # 1200 points, gold
TIMEOUT = 5


@pytest.fixture
def till(tmp_path: Path, clock: ManualClock) -> Iterator[Agent]:
    a = Agent(tmp_path / "data", "till-1", clock=clock)
    a.load_snapshot(snapshot(program={**PROGRAM, "holdTtlSeconds": 600}))
    yield a
    a.close()


def test_confirm_reports_the_balance_after_receipts_committed_since_the_hold(
    till: Agent,
) -> None:
    """Two receipts of one customer held side by side (two baskets, one family card):
    the second Confirm's balance is the customer's balance after it, not the figure
    seen at its Hold, before the first one was committed."""
    first = till.hold(receipt_from_json(receipt("r1", redeemPoints=40)))
    second = till.hold(receipt_from_json(receipt("r2", redeemPoints=30)))
    assert first.state == second.state == "HELD"
    till.confirm("r1")
    done = till.confirm("r2")
    now = till.balance(ANNA, datetime.fromisoformat("2026-11-23T10:15:00+03:00"))
    assert done.to_json()["balance"] == now.to_json()
    assert now.available_points == 1200 - 40 - 30 + first.earned_points + second.earned_points
    assert done.to_json()["display"][-1].endswith(str(now.available_points))
    # the figures of the sale stay those of the Hold
    for key in ("lines", "totalMinor", "discountMinor", "redeemedPoints", "earnedPoints"):
        assert done.to_json()[key] == second.to_json()[key]
    assert till.confirm("r2") == done  # idempotent: the stored result


def test_config_file_from_the_environment_and_the_flag_wins_over_it(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §10: `--config` on the command line wins over the environment
    (TILLPOINT_CONFIG), which names the file when no flag does."""
    monkeypatch.delenv("TILLPOINT_DEVICE_ID", raising=False)
    env_file, flag_file = tmp_path / "env.toml", tmp_path / "flag.toml"
    env_file.write_text('device_id = "from-env-file"\n', encoding="utf-8")
    flag_file.write_text('device_id = "from-flag-file"\n', encoding="utf-8")
    monkeypatch.setenv("TILLPOINT_CONFIG", str(env_file))
    run = cli("config", "check", "--json")
    assert run.code == 0, run.err
    assert run.json()["deviceId"] == "from-env-file"
    run = cli("--config", str(flag_file), "config", "check", "--json")
    assert run.code == 0, run.err
    assert run.json()["deviceId"] == "from-flag-file"
    monkeypatch.setenv("TILLPOINT_CONFIG", str(tmp_path / "missing.toml"))
    run = cli("config", "check", "--json")
    assert run.code == 2 and "cannot read config" in run.err and "\n" not in run.err.strip()


def test_a_refund_id_reused_for_another_refund_is_a_conflict(till: Agent) -> None:
    """Refunds are idempotent on refundId (docs/CONTRACT.md §6); like a receiptId (§11), an
    id reused with another body is refused, never answered with the first refund's result."""
    till.checkout(receipt_from_json(receipt("r1", redeemPoints=40)))
    refund = {
        "refundId": "rf1",
        "receiptId": "r1",
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": "4601234000017", "qty": "1"}],
    }
    first = till.refund(refund_from_json(refund))
    assert till.refund(refund_from_json(refund)) == first  # a retry
    assert (
        till.refund(
            refund_from_json({**refund, "lines": [{"sku": "4601234000017", "qty": "1.000"}]})
        )
        == first
    )
    with pytest.raises(Conflict, match="rf1"):
        till.refund(refund_from_json({**refund, "lines": [{"sku": "4601234000017", "qty": "2"}]}))
    with pytest.raises(Conflict):
        till.refund(refund_from_json({**refund, "receiptId": "r2"}))
    seqs = till._ledger.execute("SELECT count(*) FROM refunds").fetchone()[0]
    assert seqs == 1


def test_a_receipt_committed_by_an_older_agent_answers_as_confirmed(till: Agent) -> None:
    """A ledger upgraded from before hold/confirm (commit 7603b97) stored results without
    `state`; replaying such a receipt answers `"state": "CONFIRMED"` like any commit."""
    done = till.checkout(receipt_from_json(receipt("old")))
    legacy = {k: v for k, v in done.to_json().items() if k != "state"}
    till._ledger.execute("DELETE FROM receipt_life")
    till._ledger.execute(
        "UPDATE receipts SET result = ? WHERE receipt_id = 'old'",
        (json.dumps(legacy, ensure_ascii=False),),
    )
    assert till.checkout(receipt_from_json(receipt("old"))) == done
    assert till.hold(receipt_from_json(receipt("old"))) == done
    assert till.confirm("old") == done


EXPIRING = [{"points": 300, "expiresAt": "2026-12-31T23:59:59+03:00"}]


@pytest.fixture
def stub(tmp_path: Path, clock: ManualClock) -> Iterator[pb_grpc.PosAgentStub]:
    """A real PosAgent server over a till where Anna has points that expire."""
    agent = Agent(tmp_path / "grpc", "till-1", clock=clock)
    snap = snapshot(program={**PROGRAM, "holdTtlSeconds": 600, "pointsLifetimeDays": 365})
    snap["customers"][0]["expiring"] = EXPIRING
    agent.load_snapshot(snap)
    try:
        with posagent_stub(agent) as stub:
            yield stub
    finally:
        agent.close()


def test_grpc_results_carry_expiring_points_and_hold_an_unknown_card(
    stub: pb_grpc.PosAgentStub,
) -> None:
    """A merge put the result's `balance.expiring` inside `if holdExpiresAt`: Quote and
    Checkout lost it over gRPC, and Hold of an UNKNOWN card (no balance) was INTERNAL."""
    request = json_format.ParseDict(receipt(redeemPoints=10), pb.Receipt())
    quoted = stub.Quote(request, timeout=TIMEOUT)
    assert [b.points for b in quoted.balance.expiring][:1] == [290]
    done = stub.Checkout(request, timeout=TIMEOUT)
    assert [b.points for b in done.balance.expiring][:1] == [290]
    unknown = json_format.ParseDict(receipt("u1", card="2770000000079"), pb.Receipt())
    held = stub.Hold(unknown, timeout=TIMEOUT)
    assert held.state == pb.HELD and held.card.status == pb.UNKNOWN
    assert not held.HasField("balance")


def _old_ledger(data_dir: Path) -> None:
    """ledger.db as the agent of commit 7603b97 left it (migrations m001-m002 only): one
    receipt of Anna's, 40 points spent and 10 earned, pending for two days, not pushed."""
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations
    from tillpoint.agent import ledger

    old = Migrations("tillpoint.ledger")
    old._migrations = [m for m in ledger.ledger_migrations._migrations if m.name < "m003"]
    assert [m.name for m in old._migrations] == ["m001_ledger", "m002_print_jobs_open"]
    data_dir.mkdir(parents=True)
    conn = sqlite3.connect(data_dir / "ledger.db", isolation_level=None)
    old.apply(Database(conn))
    # the request exactly as 7603b97 stored it: its Receipt had no explain, no coupons
    request = receipt("old-1", redeemPoints=40)
    result = {"receiptId": "old-1", "redeemedPoints": 40, "earnedPoints": 10}
    at, created = "2026-11-23T10:15:00+03:00", "2026-11-23T07:15:01.000000Z"
    conn.executescript("BEGIN")
    conn.execute(
        "INSERT INTO receipts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ("old-1", "till-1", 1, at, "2026-11-23", ANNA, "c-a", "OFFLINE", 40, 0,
         json.dumps(request, ensure_ascii=False), json.dumps(result), created),
    )  # fmt: skip
    conn.execute("INSERT INTO receipt_lines VALUES ('old-1', 0, '4601234000017', '2', 40, 10, '0')")
    conn.executemany(
        "INSERT INTO points (device_id, seq, customer_id, receipt_id, kind, points,"
        " activates_at) VALUES ('till-1', 1, 'c-a', 'old-1', ?, ?, ?)",
        [("spend", -40, None), ("earn", 10, "2026-11-25T07:15:00.000000Z")],
    )
    conn.execute(
        "INSERT INTO journal VALUES ('till-1', 1, 'CHECKOUT', 'old-1', ?, 'c-a', ?, ?)",
        (at, ANNA, created),
    )
    conn.execute(
        "INSERT INTO outbox (device_id, seq, payload, created_at) VALUES ('till-1', 1, '{}', ?)",
        (created,),
    )
    conn.execute("INSERT INTO device VALUES ('last_seq:till-1', '1')")
    conn.execute("COMMIT")
    conn.close()


def test_a_ledger_of_the_previous_release_upgrades_and_keeps_its_meaning(
    tmp_path: Path, clock: ManualClock
) -> None:
    """m003-m005 on a ledger written before hold/confirm, refund activation and expiry."""
    data_dir = tmp_path / "old"
    _old_ledger(data_dir)
    till = Agent(data_dir, "till-1", clock=clock)
    try:
        # the program changed since: no delay now, points expire; the old sale keeps its own
        till.load_snapshot(snapshot(program={**PROGRAM, "pointsLifetimeDays": 365}))
        day = datetime.fromisoformat("2026-11-24T12:00:00+03:00")
        assert till.balance(ANNA, day).to_json() == {"availablePoints": 1160, "pendingPoints": 10}
        replay = till.checkout(receipt_from_json(receipt("old-1", redeemPoints=40)))
        assert replay.state == "CONFIRMED" and replay.earned_points == 10
        assert (replay.device_id, replay.seq) == ("till-1", 1)  # from its receipt row
        assert till.hold(receipt_from_json(receipt("old-1", redeemPoints=40))) == replay
        with pytest.raises(Conflict):
            till.checkout(receipt_from_json(receipt("old-1", redeemPoints=41)))
        back = till.refund(
            refund_from_json(
                {
                    "refundId": "f1",
                    "receiptId": "old-1",
                    "at": day.isoformat(),
                    "lines": [{"sku": "4601234000017", "qty": "1"}],
                }
            )
        )
        # still pending at the refund (its activation fixed at the old commit): taken from it
        assert (back.returned_points, back.taken_back_points) == (20, 5)
        assert back.to_json()["balance"] == {"availablePoints": 1180, "pendingPoints": 5}
        till._ledger.execute(  # as the previous release stored a refund's result
            "UPDATE refunds SET result = ? WHERE refund_id = 'f1'",
            (
                json.dumps(
                    {k: v for k, v in back.to_json().items() if k not in ("deviceId", "seq")}
                ),
            ),
        )
        assert (
            till.refund(
                refund_from_json(
                    {
                        "refundId": "f1",
                        "receiptId": "old-1",
                        "at": day.isoformat(),
                        "lines": [{"sku": "4601234000017", "qty": "1"}],
                    }
                )
            )
            == back
        )
        new = till.checkout(receipt_from_json(receipt("new-1")))
        assert till.status().last_seq == 3 and new.state == "CONFIRMED"
    finally:
        till.close()


NEXT_VISIT = {
    "id": "o-next",
    "campaignId": "camp-n",
    "customerId": "c-a",
    "kind": "PERCENT_OFF",
    "skus": ["4601234000017"],
    "value": "20",
    "couponRequired": True,
    "issueCoupon": True,
    "printable": True,
    "printText": "−20% на молоко в следующий раз",
    "validFrom": "2026-11-01T00:00:00+03:00",
    "validTo": "2026-12-31T23:59:59+03:00",
}


def _issued(agent: Agent) -> list[str]:
    return [str(c) for (c,) in agent._ledger.execute("SELECT code FROM issued_coupons")]


def test_a_reimaged_till_never_issues_a_coupon_code_again(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Till-issued codes use a per-device number "never reused, like seq" (docs/CONTRACT.md
    §13): a till whose disk was replaced continues above what the hub counted of it
    (appliedThrough), as its seq does, instead of printing its first codes again."""
    first = Agent(tmp_path / "before", "till-1", clock=clock)
    try:
        first.load_snapshot(snapshot(offers=[NEXT_VISIT]))
        assert first.checkout(receipt_from_json(receipt("r1"))).to_json()["printedOffers"] == [
            "o-next"
        ]
        before = _issued(first)
        assert before == ["TP5TILL11"]  # a new till counts from 1
        last_seq = first.status().last_seq
    finally:
        first.close()
    again = Agent(tmp_path / "after", "till-1", clock=clock)  # the same till, a new disk
    try:
        again.load_snapshot(
            snapshot(version=2, offers=[NEXT_VISIT], appliedThrough={"till-1": last_seq})
        )
        assert again.checkout(receipt_from_json(receipt("r2"))).to_json()["printedOffers"] == [
            "o-next"
        ]
        after = _issued(again)
        assert len(after) == 1 and after[0] not in before
        assert again.status().last_seq > last_seq
    finally:
        again.close()


SORRY = {
    "id": "o-sorry",
    "campaignId": "camp-s",
    "kind": "AMOUNT_OFF",
    "skus": ["4601234000017"],
    "value": "1000",
    "couponRequired": True,
    "validFrom": "2026-11-01T00:00:00+03:00",
    "validTo": "2026-12-31T23:59:59+03:00",
}
COUPON = {"code": "SORRY7K2Q9", "offerId": "o-sorry", "customerId": "c-a"}


def test_a_quote_sees_the_coupon_of_an_expired_hold_as_free_again(
    till: Agent, clock: ManualClock
) -> None:
    """A hold reserves its coupon until it expires (docs/CONTRACT.md §11, §13); a quote after
    the expiry, before any sweep (a CLI till has no sweeper), finds the code free, as it
    finds the hold's points free."""
    till.load_snapshot(
        snapshot(
            version=2,
            program={**PROGRAM, "holdTtlSeconds": 600},
            offers=[SORRY],
            coupons=[COUPON],
        )
    )

    def verdict(result: dict[str, Any]) -> tuple[str, str]:
        (v,) = result.to_json()["coupons"]
        return v["status"], v.get("reason", "")

    held = till.hold(receipt_from_json(receipt("r1", coupons=["sorry-7k2q9"])))
    assert verdict(held) == ("APPLIED", "")
    assert verdict(till.quote(receipt_from_json(receipt("q1", coupons=["SORRY7K2Q9"])))) == (
        "REJECTED",
        "ALREADY_USED",
    )
    clock.advance(601)
    assert verdict(till.quote(receipt_from_json(receipt("q2", coupons=["SORRY7K2Q9"])))) == (
        "APPLIED",
        "",
    )
    with pytest.raises(Refused, match="hold expired"):
        till.confirm("r1")
    assert verdict(till.checkout(receipt_from_json(receipt("r2", coupons=["SORRY7K2Q9"])))) == (
        "APPLIED",
        "",
    )
