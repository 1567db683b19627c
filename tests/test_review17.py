"""Faults found in session 17's audits and re-reads, each with the test that failed before."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from tillpoint.agent import ledger
from tillpoint.agent.errors import InputError
from tillpoint.agent.models import Program
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.agent.service import EARLIER_DIGESTS, Agent, Conflict, _Request, request_digest
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
from tillpoint.sync.loopback import receipt as sync_receipt

from .conftest import CLI, receipt, snapshot
from .test_review1 import NEXT_VISIT

MILK = "4601234000017"


TWO_BASES = [{"code": "base", "accrualPercent": "3"}, {"code": "base", "accrualPercent": "5"}]


def test_a_tier_code_given_twice_is_refused_with_the_snapshot(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `base` tiers at 3 % and 5 %: which one a customer earns at was the first's, by
    the order of a list; the snapshot is refused, and the cache keeps what it had; so is
    the hub's import. A program an older release stored with them still reads back (the
    till's cache, the hub's published program): refusing it there stopped every sale."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot())
        bad = snapshot(version=2)
        bad["program"]["tiers"] = TWO_BASES
        with pytest.raises(InputError, match="tier 'base' appears twice"):
            agent.load_snapshot(bad)
        assert agent.status().cache_version == 1
    finally:
        agent.close()
    assert Program.model_validate({"tiers": TWO_BASES}).repeated_tier() == "base"
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    run = cli("hub", "import", {"program": {"tiers": TWO_BASES}})
    assert run.code == 2 and "tier 'base' appears twice" in run.err, run.err


def test_a_retry_writing_the_same_moment_in_another_offset_is_a_retry(tmp_path: Path) -> None:
    """A POS that resends a hold with `at` in UTC ("07:15:00Z" for "10:15:00+03:00") got
    409: the moment is what is priced, so it is the same body; another moment is not."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot())
        first = agent.hold(receipt_from_json(receipt("r-1"))).to_json()
        again = agent.hold(receipt_from_json(receipt("r-1", at="2026-11-23T07:15:00Z")))
        assert again.to_json() == first
        sold = agent.checkout(receipt_from_json(receipt("r-2", at="2026-11-23T07:15:00.000Z")))
        retry = agent.checkout(receipt_from_json(receipt("r-2")))
        assert retry.to_json() == sold.to_json()
        with pytest.raises(Conflict):
            agent.hold(receipt_from_json(receipt("r-1", at="2026-11-23T07:15:01Z")))
        back = {"refundId": "b-1", "receiptId": "r-2", "lines": [{"sku": MILK, "qty": "1"}]}
        given = agent.refund(refund_from_json({**back, "at": "2026-11-24T12:00:00+03:00"}))
        again_back = agent.refund(refund_from_json({**back, "at": "2026-11-24T09:00:00Z"}))
        assert again_back.to_json() == given.to_json()
    finally:
        agent.close()


def test_a_trace_lists_the_offline_limit_when_no_points_are_asked(tmp_path: Path) -> None:
    """§17: "every cap (balance, percent, capacity, offline limit, hub grant)". A standalone
    till's trace left the offline limit out when `redeemPoints` was 0 (it was read only
    for a redemption); it binds nothing then, and no figure changes."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot())
        body = receipt("r-1", redeemPoints=0, explain=True)
        sale = agent.quote(receipt_from_json(body)).to_json()
        redemption = sale["trace"]["redemption"]
        caps = {c["name"]: c["points"] for c in redemption["caps"]}
        assert caps["OFFLINE_LIMIT"] == 500 and redemption["boundBy"] == "REQUESTED"
        plain = agent.quote(receipt_from_json({**body, "explain": False})).to_json()
        assert {k: v for k, v in sale.items() if k != "trace"} == plain
    finally:
        agent.close()


def test_an_online_trace_lists_the_hub_grant_that_bound_nothing(tmp_path: Path) -> None:
    """Online, a redemption's trace listed HUB_GRANT only when the grant was below what the
    other caps allowed; a full grant is a cap too (§17: every cap), and changes nothing."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till")
    try:
        card = sample_master_data()["cards"][0]["number"]
        body = sync_receipt("q-1", card, redeem=-1)
        wait_for(lambda: till.agent.status().cache_version >= 1)
        wait_for(lambda: till.agent.quote(receipt_from_json(body)).mode == "ONLINE")
        sale = till.agent.quote(receipt_from_json({**body, "explain": True})).to_json()
        redemption = sale["trace"]["redemption"]
        caps = {c["name"]: c["points"] for c in redemption["caps"]}
        assert "HUB_GRANT" in caps and caps["HUB_GRANT"] >= redemption["allowedPoints"] > 0
        plain = till.agent.quote(receipt_from_json(body)).to_json()
        assert {k: v for k, v in sale.items() if k != "trace"} == plain
    finally:
        till.stop()
        hub.stop()


def test_an_unknown_cards_commit_shows_the_points_it_earned(tmp_path: Path) -> None:
    """§8: points earned after a commit. An UNKNOWN card's checkout (and its confirm)
    showed the total and an empty line; its quote and hold still show the running total."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot())
        unknown = "2770000000994"
        quoted = agent.quote(receipt_from_json(receipt("r-1", card=unknown)))
        assert quoted.card.status == "UNKNOWN" and quoted.earned_points > 0
        earned = f"Начислено: +{quoted.earned_points}"
        sold = agent.checkout(receipt_from_json(receipt("r-1", card=unknown))).to_json()
        assert sold["display"] == [quoted.display[0], earned]
        held = agent.hold(receipt_from_json(receipt("r-2", card=unknown))).to_json()
        assert held["display"] == list(quoted.display)
        assert agent.confirm("r-2").to_json()["display"] == [quoted.display[0], earned]
    finally:
        agent.close()


def _issuing_till(tmp_path: Path) -> tuple[Agent, str, int]:
    """A standalone till that sold r-1 and printed a one-time code on it: (the agent, the
    code, the seq of the COUPON_ISSUED transaction)."""
    agent = Agent(tmp_path / "till", "till-1")
    agent.load_snapshot(snapshot(offers=[NEXT_VISIT]))
    assert agent.checkout(receipt_from_json(receipt("r-1"))).printed_offers == ("o-next",)
    code, seq = agent._ledger.execute(
        "SELECT ref_id, seq FROM journal WHERE kind = 'COUPON_ISSUED'"
    ).fetchone()
    return agent, str(code), int(seq)


def _verdict(agent: Agent, receipt_id: str, code: str) -> tuple[str, str]:
    sale = agent.quote(receipt_from_json(receipt(receipt_id, coupons=[code]))).to_json()
    return sale["coupons"][0]["status"], sale["coupons"][0]["reason"]


def test_a_code_this_till_issued_and_the_hub_removed_is_gone_here_too(tmp_path: Path) -> None:
    """§13: `removed.coupons` lists codes that went (used elsewhere, voided). A code this
    till issued stayed usable here whatever the hub said: the till's own table answered
    when the snapshot had no such code. Once the hub has counted the code's transaction
    (appliedThrough), the snapshot decides; before that, the till's table still does."""
    agent, code, seq = _issuing_till(tmp_path)
    try:
        assert _verdict(agent, "q-1", code) == ("APPLIED", "")
        not_yet = {"version": 2, "baseVersion": 1, "appliedThrough": {"till-1": seq - 1}}
        agent.load_snapshot({**not_yet, "issuedAt": "2026-11-23T07:00:00Z"})
        assert _verdict(agent, "q-2", code) == ("APPLIED", "")  # not counted yet: usable
        gone = {"version": 3, "baseVersion": 2, "appliedThrough": {"till-1": seq}}
        gone["removed"] = {"coupons": [code]}
        agent.load_snapshot({**gone, "issuedAt": "2026-11-23T07:00:00Z"})
        assert _verdict(agent, "q-3", code) == ("REJECTED", "UNKNOWN")
        sold = agent.checkout(receipt_from_json(receipt("r-2", coupons=[code]))).to_json()
        assert sold["coupons"][0]["status"] == "REJECTED" and sold["discountMinor"] == 0
        assert agent.scan(code).kind == "CARD"  # no longer a coupon this till knows
    finally:
        agent.close()


def test_the_codes_issued_before_the_upgrade_learn_their_transaction(tmp_path: Path) -> None:
    """m014 gives each code a till issued before it the seq of its COUPON_ISSUED row."""
    agent, code, seq = _issuing_till(tmp_path)
    conn = agent._ledger
    conn.execute("UPDATE issued_coupons SET seq = NULL")
    conn.execute("ALTER TABLE issued_coupons DROP COLUMN seq")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm014_issued_coupons_seq'")
    agent.close()
    upgraded = ledger.open_ledger(tmp_path / "till")
    try:
        row = upgraded.execute("SELECT seq FROM issued_coupons WHERE code = ?", (code,))
        assert row.fetchone() == (seq,)
    finally:
        upgraded.close()


@pytest.mark.parametrize("first", ["r-1", "r-2"])
@pytest.mark.parametrize("kept", [0, 500])
@pytest.mark.parametrize("returned", ["before expiry", "after expiry"])
def test_two_returned_sales_leave_the_balance_as_it_was_in_either_order(
    first: str, kept: int, returned: str
) -> None:
    """§6 × §16: r-1 earns 70 points (expiring), r-2 spends them, both come back. Refunding
    r-1 first took its 70 back from elsewhere (a debt, or the points that never expire);
    r-2's refund then put its 70 into r-1's batch, which expired later: the customer ended
    70 short for good (or showed 70 "expiring" on a balance of 0). In either order now, the
    balance is what it was before the two sales, and stays so. Returned after r-1's
    points expired, both orders take the 70 back (§6: exactly e) and give r-2's back into
    the expired batch, where they stay expired (§16): 70 short, in either order too."""
    from datetime import datetime as dt
    from zoneinfo import ZoneInfo

    from tillpoint.agent.expiry import Movement, wallet_of

    zone = ZoneInfo("Europe/Moscow")
    sold, spent, back = (dt(2026, 11, d, 10, tzinfo=zone) for d in (23, 24, 25))
    expires = dt(2026, 12, 23, 10, tzinfo=zone)
    if returned == "after expiry":
        back = dt(2027, 1, 5, 10, tzinfo=zone)
    moves = [
        Movement("earn", 70, "r-1", sold, False, sold, expires),
        Movement("spend", -70, "r-2", spent, False),
    ]
    refunds = {
        "r-1": Movement("spend", -70, "r-1", back, True),  # the 70 it earned, taken back
        "r-2": Movement("spend", 70, "r-2", back, True),  # the 70 it spent, given back
    }
    moves += [refunds[first], refunds["r-2" if first == "r-1" else "r-1"]]
    wallet = wallet_of(kept, [], [], moves, 30, zone)
    left = kept if returned == "before expiry" else kept - 70
    for at in (back, dt(2027, 2, 1, tzinfo=zone)):
        assert wallet.points_at(at) == (left, 0), at
    assert wallet.expiring_at(back) == []


@pytest.mark.parametrize("earlier", EARLIER_DIGESTS)
def test_a_hold_an_earlier_release_stored_is_retried_after_the_upgrade(
    tmp_path: Path, earlier: tuple[str, ...]
) -> None:
    """A hold stored by an earlier release carries that release's digest (the body as
    sent; then the card and codes as looked up, `at` as sent): the same body retried
    after the upgrade is the same receipt, not a 409 (a retry spelling the card with
    blanks matched only the first of the two)."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        agent.load_snapshot(snapshot())
        body = receipt("h-1", card="2770 0000 0001 7")
        held = agent.hold(receipt_from_json(body)).to_json()
        stored = _Request.of(receipt_from_json(body)).data
        agent._ledger.execute(
            "UPDATE receipt_life SET digest = ? WHERE receipt_id = 'h-1'",
            (request_digest(stored, looked_up=earlier),),
        )
        assert agent.hold(receipt_from_json(body)).to_json() == held
        with pytest.raises(Conflict):
            agent.hold(receipt_from_json(receipt("h-1", card="2770000000017", redeemPoints=1)))
    finally:
        agent.close()


def test_the_hubs_balance_refresh_is_due_by_its_last_version_not_its_start(
    tmp_path: Path,
) -> None:
    """`--publish-every`: the refresh was timed from the hub process's start, so a hub
    restarted more often than that (a deploy, a crash loop) published none, and a used
    one-time code stayed in every till's snapshot. It is due that long after the store's
    latest version now, whenever the process started."""
    from datetime import timedelta

    from tillpoint.sync.hub_server import HubConfig

    shift = [timedelta(0)]

    def clock() -> datetime:
        return datetime.now(UTC) + shift[0]

    config = HubConfig(heartbeat_s=1.0, watch_interval_s=0.1, publish_every_s=3600)
    hub = LoopbackHub(tmp_path / "hub", config, clock=clock, data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till")
    try:
        wait_for(lambda: till.agent.status().cache_version >= 1)
        card = sample_master_data()["cards"][0]["number"]
        till.agent.checkout(receipt_from_json(sync_receipt("s-1", card)))
        wait_for(lambda: hub.store.ingested_since(hub.store.latest().cut) > 0)
        assert hub.store.latest().version == 1
        hub.restart()  # a process that started just now
        shift[0] = timedelta(hours=2)  # the store's latest version is 2 h old
        wait_for(lambda: hub.store.latest().version == 2)
        assert hub.store.latest().reason == "balances"
    finally:
        till.stop()
        hub.stop()
