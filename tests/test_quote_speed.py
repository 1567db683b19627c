"""The per-call speed-ups keep the behaviour: cached personal offers and product rows never
outlive their snapshot version, and quotes on other threads read beside a checkout's commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent import cache as cache_mod
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from tests.conftest import receipt, snapshot

MILK = "4601234000017"


def offer(value: str, offer_id: str = "o-milk", customer: str = "c-a") -> dict[str, Any]:
    return {
        "id": offer_id,
        "campaignId": "camp-1",
        "customerId": customer,
        "kind": "PERCENT_OFF",
        "skus": [MILK],
        "value": value,
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2026-12-31T23:59:59+03:00",
    }


def discount(agent: Agent, rid: str = "q") -> int:
    return int(agent.quote(receipt_from_json(receipt(rid))).discount_minor)


def delta(version: int, **rows: Any) -> dict[str, Any]:
    return {
        "version": version,
        "baseVersion": version - 1,
        "issuedAt": "2026-11-23T04:00:00Z",
        **rows,
    }


def test_a_new_snapshot_version_never_serves_the_old_personal_offers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    other = Agent(data, "till-1")  # another process: `tillpoint snapshot load`
    try:
        agent.load_snapshot(snapshot(offers=[offer("10")]))
        assert discount(agent) == 1798  # 10 % of 2 × 89.90
        assert discount(agent) == 1798  # now from the cache

        agent.load_snapshot(delta(2, offers=[offer("50")]))  # this agent's own delta
        assert discount(agent) == 8990

        other.load_snapshot(delta(3, offers=[offer("20")]))  # another agent's delta
        assert discount(agent) == 3596

        other.load_snapshot(delta(4, removed={"offers": ["o-milk"]}))
        assert discount(agent) == 0

        other.load_snapshot(snapshot(version=5, offers=[offer("30", "o-new")]))  # a full one
        assert discount(agent) == 5394
        assert agent.quote(receipt_from_json(receipt("q"))).lines[0].offer_id == "o-new"
    finally:
        other.close()
        agent.close()


def test_the_personal_offers_kept_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_mod, "PERSONAL_OFFERS_KEPT", 1)
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot(offers=[offer("10"), offer("50", "o-b", customer="c-b")]))
        assert discount(agent) == 1798
        assert (
            int(agent.quote(receipt_from_json(receipt("q", card="2770000000024"))).discount_minor)
            == 8990
        )
        kept = [v for k, v in agent._memo.items() if k.startswith("personal@")]
        assert len(kept) == 1 and list(kept[0]) == ["c-b"]
        assert discount(agent) == 1798  # parsed again
    finally:
        agent.close()


def earned(agent: Agent, rid: str = "q", sku: str = MILK) -> int:
    lines = [{"sku": sku, "qty": "2", "priceMinor": 8990}]
    return int(agent.quote(receipt_from_json(receipt(rid, lines=lines))).earned_points)


def test_a_new_snapshot_version_never_serves_the_old_product_rows(tmp_path: Path) -> None:
    """The products memo (`CacheView.products`) is per snapshot version: a delta that
    excludes a product, adds one or removes it, or a full snapshot, is priced at once,
    whichever process applied it."""
    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    other = Agent(data, "till-1")  # another process: `tillpoint snapshot load`
    new_sku = "4601234000550"
    milk = {"sku": MILK, "name": "Молоко", "category": "dairy"}
    try:
        agent.load_snapshot(snapshot())
        assert earned(agent) > 0
        assert earned(agent, sku=new_sku) == 0  # no such product: remembered as none
        assert earned(agent) > 0  # now from the memo

        agent.load_snapshot(delta(2, products=[{**milk, "excludedFromLoyalty": True}]))
        assert earned(agent) == 0

        other.load_snapshot(delta(3, products=[milk, {**milk, "sku": new_sku}]))
        assert earned(agent) > 0
        assert earned(agent, sku=new_sku) > 0

        other.load_snapshot(delta(4, removed={"products": [new_sku]}))
        assert earned(agent, sku=new_sku) == 0

        other.load_snapshot(snapshot(version=5, products=[{**milk, "excludedFromLoyalty": True}]))
        assert earned(agent) == 0
    finally:
        other.close()
        agent.close()


def test_an_open_receipt_reads_only_the_products_new_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As items are scanned a till quotes its receipt again: each quote reads the SKUs
    the receipt did not have; the rows kept are bounded by receipts and by SKUs."""
    monkeypatch.setattr(cache_mod, "RECEIPTS_KEPT", 2)
    monkeypatch.setattr(cache_mod, "SKUS_KEPT", 3)
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snapshot())
        bread, tobacco, nothing = "4601234000024", "4601234000031", "4601234000550"
        statements: list[str] = []

        def scan(rid: str, *skus: str) -> list[bool]:
            lines = [{"sku": s, "qty": "1", "priceMinor": 8990} for s in skus]
            statements.clear()
            live, _ = agent._idle_readers[-1]
            live.connection().set_trace_callback(statements.append)
            try:
                answer = agent.quote(receipt_from_json(receipt(rid, lines=lines)))
            finally:
                live.connection().set_trace_callback(None)
            return [line.earned_points > 0 for line in answer.lines]

        def read() -> list[int]:  # how many SKUs each products statement asked for
            return [s.count("'") // 2 for s in statements if "FROM products" in s]

        earned(agent)  # an idle reader to trace
        yes, no = True, False  # a line that earns, one that does not (excluded, unknown)
        assert scan("a", MILK) == [yes] and read() == [1]
        assert scan("a", MILK, bread) == [yes, yes] and read() == [1]  # bread only
        assert scan("a", MILK, bread, tobacco) == [yes, yes, no] and read() == [1]
        assert scan("a", MILK, nothing, bread) == [yes, no, yes] and read() == [1]  # > SKUS_KEPT
        assert scan("a", MILK, nothing) == [yes, no] and read() == [1]  # not kept: read again

        assert scan("d", MILK, nothing) == [yes, no] and read() == [2]
        assert scan("d", MILK, nothing) == [yes, no] and read() == []  # no product: known
        kept = next(v for k, v in agent._memo.items() if k.startswith("receipt-products@"))
        with agent._read() as (view, _):  # only the SKUs asked, in a dict of the call's own
            got = view.products([MILK], "d")
            assert list(got) == [MILK] and got is not kept["d"][0]
        kept.pop("d")
        scan("b", MILK)
        scan("c", bread)
        assert list(kept) == ["b", "c"]  # RECEIPTS_KEPT: "a" went
        assert scan("a", MILK) == [yes] and read() == [1]
        assert list(kept) == ["c", "a"]
        scan("c", bread)  # quoted again: the most recent
        scan("e", MILK)
        assert list(kept) == ["c", "e"]  # the least recent went
    finally:
        agent.close()


def test_quotes_identify_and_balance_never_wait_behind_a_commit(agent: Agent) -> None:
    """A checkout holds the agent's lock and an open ledger transaction across its fsync;
    reads on other threads go on beside it and see only what is committed."""
    import threading

    before = agent.quote(receipt_from_json(receipt("q0")))
    points = agent.balance("2770000000017")
    done: dict[str, Any] = {}

    def reads() -> None:
        done["quote"] = agent.quote(receipt_from_json(receipt("q1")))
        done["card"] = agent.identify("2770000000017")
        done["balance"] = agent.balance("2770000000017")

    with agent._lock, agent._write() as conn:  # a commit in progress, not yet durable
        conn.execute(
            "INSERT INTO points (device_id, seq, customer_id, receipt_id, kind, points,"
            " activates_at) VALUES ('till-1', 999, 'c-a', 'x', 'earn', 5000, NULL)"
        )
        reader = threading.Thread(target=reads)
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "a read waited behind the commit"
        conn.execute("DELETE FROM points WHERE receipt_id = 'x'")
    assert done["quote"].balance == before.balance  # the uncommitted row unseen
    assert done["card"].customer_id == "c-a"
    assert done["balance"] == points


def test_reads_on_many_threads_match_the_serial_answers(agent: Agent) -> None:
    from concurrent.futures import ThreadPoolExecutor

    agent.load_snapshot(delta(2, offers=[offer("10")]))
    cards = ["2770000000017", "2770000000024", "2770000000093"]
    serial = {c: agent.quote(receipt_from_json(receipt("q", card=c))) for c in cards}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            answers = list(
                pool.map(
                    lambda c: (c, agent.quote(receipt_from_json(receipt("q", card=c)))), cards * 20
                )
            )
            for card, answer in answers:
                assert answer == serial[card]
