"""Review 47 (late47): `tests/latehub.py` makes any hub RPC a till calls late, and a till
whose release or push is answered late still ends with each point held, released and
settled once (CONTRACT §9, §11).

`-p tests.latehub --late-hub-rpc NAME` (repeatable; `all`) makes every in-process hub's
`NAME` wait `--late-hub-s` before it reads the call or after it has answered; review 47
ran the hold, coupon, authorise, release, reset, refund and sync files under it with each
RPC late (docs/DECISIONS.md, "Review 47 (late47)"). A plugin that silently delayed
nothing would find nothing: here the plugin's `install` is checked for each RPC (and
`all`, and the default: `AuthorizeRedemption` alone, as before), and then used as the
plugin uses it, on a real loopback hub (gRPC over mTLS on 127.0.0.1, its SQLite store):

- a Cancel's `ReleaseRedemption` answered past the till's deadline, `before` (the hub
  refuses it, its hold kept) and `after` (the hub released; only the answer is late):
  either way the release stays owed at the till, is sent again once the hub answers in
  time, and the customer's other till then gets every point ONLINE;
- a sale's `PushTransactions` answered past the push's deadline, `before` (the hub
  stores the batch after the till gave up: the call has no deadline check) and `after`:
  the next sale's grant (the first still unsynced at the till, stored at the hub) counts
  the first sale once; the till sends the batch again, the hub takes it as a duplicate,
  and each sale is stored and its points counted once.

The hub "answers in time" again by being restarted on its port once the plugin is undone
(a server binds its servicer's methods when it starts). Default part: four tests of a hub
and two tills, about 10 s on two workers of the loaded 2-core machine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data, timings, wait_for
from tillpoint.sync.push import Pusher

from . import latehub
from .conftest import ANSWERED_S, answered, enrolled_till
from .test_review45_late45 import run_pytest_latehub

ANNA = "2770000000017"  # c-1: 1,200 points at the hub
BIG = [{"sku": "4601234000017", "qty": "1", "priceMinor": 1_000_000}]  # takes all 1,200
# Later than the deadline of the till's release (1 s + the hub's 0.1 s margin) and of the
# push (1 s), well within the tests' waits.
LATE_S = 2.0
DEADLINE_S = 1.0


@pytest.fixture(autouse=True)
def _not_under_the_plugin(request: pytest.FixtureRequest) -> None:
    """These install latehub themselves: run with `-p tests.latehub`, they are skipped."""
    if request.config.pluginmanager.has_plugin("tests.latehub"):
        pytest.skip("latehub is loaded for the whole run: these install it themselves")


def held(hub: LoopbackHub) -> int:
    return int(hub.store.balance("c-1", datetime.now(UTC)).held)


def balance(hub: LoopbackHub) -> tuple[int, int]:
    """Anna's available and pending points at the hub."""
    b = hub.store.balance("c-1", datetime.now(UTC))
    return int(b.available), int(b.pending)


# ------------------------------------------------------------------ the plugin


def test_each_rpc_and_all_are_made_late_and_undone() -> None:
    originals = {name: getattr(HubServicer, name) for name in latehub.RPCS}
    for name in latehub.RPCS:
        undo = latehub.install(0.0, "after", [name])
        changed = [n for n in latehub.RPCS if getattr(HubServicer, n) is not originals[n]]
        undo()
        assert changed == [name]
    undo = latehub.install(0.0, "before")  # the default: AuthorizeRedemption alone
    changed = [n for n in latehub.RPCS if getattr(HubServicer, n) is not originals[n]]
    undo()
    assert changed == ["AuthorizeRedemption"]
    undo = latehub.install(0.0, "before", ["all"])
    changed = [n for n in latehub.RPCS if getattr(HubServicer, n) is not originals[n]]
    undo()
    assert changed == list(latehub.RPCS)
    assert {n: getattr(HubServicer, n) for n in latehub.RPCS} == originals
    with pytest.raises(ValueError, match="not 'Release'"):
        latehub.install(0.0, "before", ["Release"])
    assert {n: getattr(HubServicer, n) for n in latehub.RPCS} == originals


# ------------------------------------------------------ a release answered late


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_release_answered_late_stays_owed_and_is_sent_again(where: str, tmp_path: Path) -> None:
    """CONTRACT §11: a Cancel's release that the hub answers past the till's deadline is
    owed (not taken as done), whatever the hub did with it; sent again once the hub
    answers in time, the points are free for the customer's other till."""
    undo = latehub.install(LATE_S, where, ["ReleaseRedemption"])
    try:
        hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    finally:
        undo()  # the hub started with it keeps its late method until it is restarted
    a = enrolled_till(hub, tmp_path / "a", "a", timings=timings(redeem_timeout_s=DEADLINE_S))
    b = enrolled_till(hub, tmp_path / "b", "b", timings=answered())
    try:
        a.authoriser.timeout_s = ANSWERED_S  # the Hold's grant in time (not the point here)
        hold = a.agent.hold(receipt_from_json(receipt("r-1", ANNA, redeem=1200, lines=BIG)))
        assert (hold.mode, hold.redeemed_points) == ("ONLINE", 1200)
        assert held(hub) == 1200
        a.authoriser.timeout_s = DEADLINE_S
        assert a.agent.cancel("r-1").state == "CANCELLED"
        assert a.agent.hub_calls_owed()["release"] == 1
        if where == "before":
            # the hub read the call past its deadline (with its margin) and left the hold
            assert held(hub) == 1200
        else:
            wait_for(lambda: held(hub) == 0)  # released, only the answer late
        assert a.agent.hub_calls_owed()["release"] == 1
        hub.restart()  # now it answers in time
        a.agent.retry_hub_releases()
        assert a.agent.hub_calls_owed()["release"] == 0
        assert held(hub) == 0
        other = b.agent.hold(receipt_from_json(receipt("b-1", ANNA, redeem=1200, lines=BIG)))
        assert (other.mode, other.redeemed_points) == ("ONLINE", 1200)
    finally:
        a.stop()
        b.stop()
        hub.stop()


# ------------------------------------------------------ a push answered late


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_push_answered_late_is_sent_again_and_stored_once(where: str, tmp_path: Path) -> None:
    """CONTRACT §9: a sale whose push the hub answers past the push's deadline is sent
    again (the till did not see it taken); the hub stores the sale and counts its points
    once, the second batch a duplicate."""
    undo = latehub.install(LATE_S, where, ["PushTransactions"])
    try:
        hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    finally:
        undo()
    till = enrolled_till(hub, tmp_path / "till", "till-1", timings=answered())
    pusher: Pusher | None = None
    try:
        sold = till.agent.checkout(receipt_from_json(receipt("r-1", ANNA, redeem=50)))
        assert (sold.mode, sold.redeemed_points) == ("ONLINE", 50)
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=DEADLINE_S)
        with pytest.raises(grpc.RpcError) as late:
            pusher.push_batch()
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert pusher.pending() == 1  # not taken as sent
        # the hub stores it all the same (`before`: once it reads the call, past the
        # till's deadline; `after`: before its answer)
        wait_for(lambda: len(hub.store.transactions("till-1")) == 1, timeout=LATE_S + 10)
        # the next sale's grant counts the first sale once: the till still sends it as
        # unsynced, the hub has it stored
        rest = till.agent.checkout(receipt_from_json(receipt("r-2", ANNA, redeem=-1, lines=BIG)))
        # (counted twice: 1,200 - 2 × (50 - its earned); not at all: 1,200)
        assert (rest.mode, rest.redeemed_points) == ("ONLINE", 1200 - 50 + sold.earned_points)
        hub.restart()
        pusher.close()
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=ANSWERED_S)
        assert pusher.drain() == 2
        assert pusher.pending() == 0
        assert [e.seq for e in hub.store.ledger("till-1")] == [1, 2]
        assert len(hub.store.transactions("till-1")) == 2
        # all spent but the second sale's earned points: each sale counted once
        assert balance(hub)[0] == rest.earned_points
        assert held(hub) == 0  # the sales' holds settled by their transactions
    finally:
        if pusher is not None:
            pusher.close()
        till.stop()
        hub.stop()


@pytest.mark.slow  # two pytest processes, 10-30 s; test_each_rpc_and_all_... is its twin
def test_the_plugin_takes_late_hub_rpc_by_name_and_refuses_an_unknown_one() -> None:
    here = "tests/test_review47_late47.py::test_each_rpc_and_all_are_made_late_and_undone"

    rpcs = ("--late-hub-rpc", "PushTransactions", "--late-hub-rpc", "ReleaseRedemption")
    listed = run_pytest_latehub("--co", *rpcs, "--late-hub-at", "after", here)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert (
        "latehub: every in-process hub RPC of ReleaseRedemption, PushTransactions answered"
        " 0.6 s late (after)"
    ) in listed.stdout
    refused = run_pytest_latehub("--co", "--late-hub-rpc", "Release", here)
    assert refused.returncode == 4, refused.stdout + refused.stderr  # a usage error
    assert "--late-hub-rpc: one of AuthorizeRedemption" in refused.stderr
    assert "not 'Release'" in refused.stderr
