"""Review 37 (rev37c): session 36's hub changes read again with real parts (CONTRACT §3,
§9, §11).

1. A late grant is kept up to the offline limit the till sends with its request (field
   9). A Hold or Checkout is priced before its write transaction and priced again inside
   it when the till's snapshot changed meanwhile (a pull landed): the second pricing made
   no request (the call's one hub deadline was spent by the first) and priced OFFLINE
   with the new snapshot's limit, higher than the one the hub kept the first grant to. The
   hub then let another till take points this receipt redeemed (CONTRACT §9: two tills
   cannot spend the same points).

Real parts: the reference hub on 127.0.0.1 (SQLite, and PostgreSQL in the slow pass),
tills with their hub links, ledgers and caches, real pulls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tillpoint.sync.loopback import LoopbackHub, import_doc, sample_master_data
from tillpoint.sync.pull import cache_version

from .test_review36_hub36 import a_till, anna_redeems_all, held_for, pull

LOW, HIGH = 200, 600  # the till's snapshot's offline limit before and after its pull


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def raised_limit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LoopbackHub]:
    """The reference hub: version 1's program lets a till redeem 200 points offline a
    day; version 2's, published by the test, 600."""
    store = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    data = sample_master_data()
    data["program"]["offlineRedeemLimitPoints"] = LOW
    h = LoopbackHub(tmp_path / "hub", data=data, store=store)
    yield h
    h.stop()


def slow_grants(
    hub: LoopbackHub, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """The hub's store grants, then stays busy 0.6 s (past the till's 300 ms deadline)
    while the first event is set; the second is set once the hub cut a late grant."""
    granted, shrunk = hub.store.authorise, hub.store.shrink
    slow, cut = threading.Event(), threading.Event()

    def slow_store(*args: Any, **kw: Any) -> Any:
        out = granted(*args, **kw)
        if slow.is_set():
            time.sleep(0.6)
        return out

    def shrink(*args: Any, **kw: Any) -> Any:
        try:
            return shrunk(*args, **kw)
        finally:
            cut.set()

    monkeypatch.setattr(hub.store, "authorise", slow_store)
    monkeypatch.setattr(hub.store, "shrink", shrink)
    return slow, cut


@pytest.mark.parametrize("how", ["hold", "checkout"])
def test_a_pull_between_the_early_pricing_and_its_transaction_redeems_no_more_than_the_hub_kept(
    raised_limit: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """CONTRACT §9, §11: till a holds version 1 (offline limit 200) and sells Anna's 1200
    points. The hub's store is slow: its grant is late, so the hub keeps 200 of it (what
    a said). While a's Hold was priced (OFFLINE, 200), a's pull applied version 2 (600):
    the Hold is priced again in its write transaction, with no time left to ask the hub,
    OFFLINE with the new limit: 600 redeemed where the hub holds 200, and till b, ONLINE,
    was then granted 1000: 1600 of Anna's 1200 points. The receipt now redeems no more
    offline than the limit its own request told the hub."""
    hub = raised_limit
    a = a_till(hub, tmp_path, "a")
    b = a_till(hub, tmp_path, "b")
    try:
        assert pull(a).version == 1
        program = {**sample_master_data()["program"], "offlineRedeemLimitPoints": HIGH}
        import_doc(hub.store, {"program": program})
        hub.publish()
        assert (pull(b).version, cache_version(a.data_dir)) == (2, 1)

        priced_early = a.agent._price_early
        pulled: list[int] = []

        def then_a_pull(*args: Any, **kw: Any) -> Any:
            early = priced_early(*args, **kw)
            pulled.append(pull(a).version)  # lands before the write transaction
            return early

        monkeypatch.setattr(a.agent, "_price_early", then_a_pull)
        a.agent.on_hub_call_owed(lambda: None)  # no shrink yet: what the hub kept itself
        slow, cut = slow_grants(hub, monkeypatch)
        slow.set()
        try:
            sold = getattr(a.agent, how)(anna_redeems_all("a-late"))
        finally:
            slow.clear()
        assert pulled == [2] and cache_version(a.data_dir) == 2
        assert sold.mode == "OFFLINE"
        assert cut.wait(10)  # the hub's late call ended
        kept = held_for(hub, "c-1")
        assert kept == LOW  # the limit a's request said
        assert sold.redeemed_points <= kept  # was 600
        other = b.agent.checkout(anna_redeems_all("b-1"))
        assert other.mode == "ONLINE"
        assert sold.redeemed_points + other.redeemed_points <= 1200  # was 1600
    finally:
        a.stop()
        b.stop()
