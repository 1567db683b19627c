"""Review 26 (rev26): a second look at the session's merged change, with a real hub on
127.0.0.1 and real tills (docs/CONTRACT.md §9, §11, §13).

- The hold timer's release of "asks the till never stored" released a hold another
  process on the same data directory was placing: a `tillpoint hold` run locally beside
  `tillpoint run` (`--local`, or an HTTP token) notes its ask, the hub grants, and
  `run`'s round, seeing no stored receipt yet, released the grant; the receipt was then
  stored HELD while the hub held nothing for it (another till could spend the points).
- `snapshot load -` read a JSON Lines header line 4 KiB at a time: a full snapshot of a
  hub with ~200 tills (every device's `appliedThrough`) was "not valid JSON".
- A hub-written JSON Lines file (keys sorted: `format` after `appliedThrough`) of a hub
  with ~250 tills was taken for one JSON document ("Extra data"), from a file or stdin.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.ledger import unstored_hub_asks, utc_text
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import HUB_ASK_GRACE_S, Agent, HubGrant
from tillpoint.sync.loopback import LoopbackHub, receipt

from .conftest import CLI, PassThroughHub, snapshot
from .conftest import receipt as till_receipt
from .test_review26_life26 import BIG, CARD, enrolled, held_at_hub

# `tillpoint run`'s hold timer having one round, in a process of its own.
ROUND = """
import sys
from pathlib import Path
from tillpoint.agent.app import till_agent
from tillpoint.sync.authoriser import HubAuthoriser
from tillpoint.sync.client import HubLink
from tillpoint.sync.pki import load_enrollment
data_dir, address = Path(sys.argv[1]), sys.argv[2]
enrollment = load_enrollment(data_dir)
link = HubLink(address, enrollment)
authoriser = HubAuthoriser(link, data_dir, "till-1", 2.0)
agent = till_agent(data_dir, "till-1", hub=authoriser)
print(agent.retry_hub_releases())
agent.close(); authoriser.close(); link.close()
"""


def hold_timer_round(data_dir: Path, hub: LoopbackHub) -> int:
    done = subprocess.run(
        [sys.executable, "-c", ROUND, str(data_dir), hub.address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout.split()[-1])


class RoundMeanwhile(PassThroughHub):
    """The CLI process's real hub authoriser; `run`'s hold timer has its round while the
    hub's answer is on its way back (after the hub placed the hold)."""

    def __init__(self, inner: Any, data_dir: Path, hub: LoopbackHub) -> None:
        super().__init__(inner)
        self.data_dir, self.hub = data_dir, hub

    def granted(self, grant: HubGrant) -> None:
        hold_timer_round(self.data_dir, self.hub)


@pytest.mark.parametrize("what", ["hold", pytest.param("checkout", marks=pytest.mark.slow)])
def test_the_hold_timer_leaves_alone_an_ask_another_process_is_still_making(
    hub: LoopbackHub, tmp_path: Path, what: str
) -> None:
    """docs/CONTRACT.md §11, §9: a hold placed by a call run in another process on the
    same data directory stays held at the hub while that call stores its receipt."""
    till = enrolled(hub, tmp_path)
    try:
        till.agent.hub = RoundMeanwhile(till.authoriser, till.data_dir, hub)
        body = receipt("r-local", CARD, redeem=100, lines=BIG)
        done = getattr(till.agent, what)(receipt_from_json(body))
        assert done.redeemed_points == 100
        assert done.state == ("HELD" if what == "hold" else "CONFIRMED")
        # the hub keeps the stored receipt's points held (a checkout's until its
        # transaction reaches the hub), and a later round leaves them too
        assert held_at_hub(hub) == 100
        assert hold_timer_round(till.data_dir, hub) == 0
        assert held_at_hub(hub) == 100
    finally:
        till.agent.close()
        till.link.close()
        till.authoriser.close()


def test_an_ask_of_a_process_gone_is_released_at_once_one_of_a_running_one_after_the_grace(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §11: what a till killed mid-request left at the hub is released at
    the restarted till's first round; an ask of another process still running (here pid
    1) waits until no call of it can still be storing its receipt. (Review 40, rev40b: a
    release of an ask answered "nothing held" stays owed for `LATE_GRANT_S`, its request
    may still be on its way: here the hub holds what the killed till's request placed.)"""
    now = [datetime.now(UTC)]
    till = enrolled(hub, tmp_path, clock=lambda: now[0])
    try:
        placed = hub.store.authorise(
            "till-1", "r-gone", "c-1", 100, now[0], [], datetime.now(UTC), 600.0
        )
        assert placed.authorised == 100 and held_at_hub(hub) == 100
        gone = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        asked = utc_text(now[0])
        with sqlite3.connect(till.data_dir / "ledger.db") as conn:
            conn.execute("INSERT INTO hub_asks VALUES ('r-gone', ?, ?)", (asked, int(gone.stdout)))
            conn.execute("INSERT INTO hub_asks VALUES ('r-busy', ?, 1)", (asked,))
        assert till.agent.retry_hub_releases() == 1
        assert held_at_hub(hub) == 0
        # Review 45 (ask45): r-gone's release stays owed while a later request of its Hold
        # may still land a grant (`LATE_GRANT_S` from its last request), whatever the hub
        # answered; r-busy was not sent (its process runs)
        assert sorted(r for r, _, _ in unstored_hub_asks(till.agent._ledger)) == [
            "r-busy",
            "r-gone",
        ]
        now[0] += timedelta(seconds=HUB_ASK_GRACE_S + 1)
        # both sent now and done: the hub held nothing for either (the count is of the
        # holds it dropped: r-gone's was counted at the first round)
        assert till.agent.retry_hub_releases() == 0
        assert unstored_hub_asks(till.agent._ledger) == []
        assert held_at_hub(hub) == 0
    finally:
        till.agent.close()
        till.link.close()
        till.authoriser.close()


def test_the_note_of_an_ask_leaves_the_ledger_writing_sales_with_full_sync(
    hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §11 (a receipt, its journal entry and its outbox row are one
    transaction, synchronous=FULL): the note of an ask is written without an fsync of its
    own; the sale's commit after it, and after a note that failed, is FULL (2) again.
    Pins what review 26's second look found right."""
    till = enrolled(hub, tmp_path)
    writer = till.agent._ledger
    try:
        done = till.agent.hold(receipt_from_json(receipt("r-sync", CARD, redeem=10, lines=BIG)))
        assert done.state == "HELD"
        assert writer.execute("PRAGMA synchronous").fetchone() == (2,)

        def no_room(*_: Any) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr("tillpoint.agent.ledger.note_hub_ask", no_room)
        with pytest.raises(Exception, match="full"):
            till.agent.checkout(receipt_from_json(receipt("r-full", CARD, redeem=10, lines=BIG)))
        assert writer.execute("PRAGMA synchronous").fetchone() == (2,)
        assert not writer.in_transaction
    finally:
        till.agent.close()
        till.link.close()
        till.authoriser.close()


def test_a_json_lines_snapshot_with_a_long_header_line_loads_from_stdin(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §3, §10: a full snapshot of a hub with some 200 tills carries every
    device's `appliedThrough` in its header line (past 4 KiB). From a file it loads; on
    standard input (`snapshot load -`) the header line was read 4 KiB at a time and the
    rest of it taken for the next line: "snapshot line 1: not valid JSON"."""
    import io

    from tests.test_snapshot_stream import to_jsonl

    doc = snapshot()
    doc["appliedThrough"] = {f"till-{n:04d}": 1000 + n for n in range(300)}
    text = to_jsonl(doc)
    assert len(text.splitlines()[0]) > 4096
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    run = cli("snapshot", "load", "-", "--json")
    assert run.code == 0, run.err
    assert run.json()["version"] == doc["version"]
    assert cli("identify", "2770000000017", "--json").json()["status"] == "FOUND"


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_a_hub_written_json_lines_snapshot_of_many_tills_is_told_from_plain_json(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """docs/CONTRACT.md §3: the hub writes its JSON Lines header in canonical JSON, keys
    sorted, so `appliedThrough` (every till of the hub) comes before `format`. With some
    250 tills `format` lay past the first 4 KiB the till looks at to tell the forms
    apart: the file was read as one JSON document, "not valid JSON (Extra data ...)"."""
    import io

    from tests.test_snapshot_stream import to_jsonl

    doc = snapshot()
    doc["appliedThrough"] = {f"till-{n:04d}": 1000 + n for n in range(300)}
    lines = to_jsonl(doc).splitlines()
    header = json.loads(lines[0])
    lines[0] = json.dumps(header, sort_keys=True, separators=(",", ":"))
    assert lines[0].index('"format"') > 4096
    text = "\n".join(lines) + "\n"
    if where == "file":
        path = tmp_path / "snap.jsonl"
        path.write_text(text)
        run = cli("snapshot", "load", str(path), "--json")
    else:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
        run = cli("snapshot", "load", "-", "--json")
    assert run.code == 0, run.err
    assert run.json()["version"] == doc["version"]
    assert cli("identify", "2770000000017", "--json").json()["status"] == "FOUND"


def test_a_refund_of_a_counted_sale_an_earlier_release_stored_gives_back_as_it_did(
    cli: CLI, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §16 (its decisions): a sale stored by an earlier release has one
    spend row with no batch named; once the hub has counted it, a refund of it after the
    upgrade gives its points back to the part that never expires (as that release did,
    until the next snapshot), and the balance is read without error. Pins what review
    26's second look found right (an upgrade stops no refund)."""
    milk = "4601234000017"
    soon = {"points": 300, "expiresAt": "2026-11-25T23:59:59+03:00"}
    snap = snapshot()
    snap["customers"][0].update(balancePoints=1000, expiring=[soon])
    assert cli("snapshot", "load", snap).code == 0
    line = {"sku": milk, "qty": "1", "priceMinor": 100000}
    sale = cli("checkout", till_receipt(lines=[line], redeemPoints=50), "--json").json()
    earned = sale["earnedPoints"]
    with sqlite3.connect(tmp_path / "data" / "ledger.db") as conn:  # as the earlier release
        rows = conn.execute(
            "SELECT count(*), sum(points) FROM points WHERE kind = 'spend'"
        ).fetchone()
        assert rows == (1, -50)
        conn.execute("UPDATE points SET expires_at = NULL WHERE kind = 'spend'")
    counted = snapshot(version=2, appliedThrough={"till-1": 1})
    counted["customers"][0].update(balancePoints=950 + earned, expiring=[{**soon, "points": 250}])
    assert cli("snapshot", "load", counted).code == 0
    refund = {
        "refundId": "f1",
        "receiptId": "r1",
        "at": "2026-11-24T12:00:00+03:00",
        "lines": [{"sku": milk, "qty": "0.5"}],
    }
    half = cli("refund", refund, "--json")
    assert half.code == 0, half.err
    assert half.json()["returnedPoints"] == 25
    assert half.json()["balance"]["expiring"] == [{**soon, "points": 250}]
    later = cli("balance", "2770000000017", "--at", "2026-11-26T10:00:00+03:00", "--json")
    assert later.json() == {"availablePoints": 700 + 25 + 178, "pendingPoints": 0}


class ScriptedHub:
    """A hub that answers each authorisation from a script: (used codes) or None (it does
    not answer: HubUnavailable). Counts the requests."""

    def __init__(self, *answers: frozenset[str] | None) -> None:
        self.answers, self.asked = list(answers), []  # type: list[frozenset[str] | None], list[list[str]]

    def authorise(
        self,
        customer_id: str,
        receipt_id: str,
        points: int,
        at: datetime,
        hold_ttl_s: int | None = None,
        coupon_codes: Sequence[str] = (),
        since: float | None = None,
        offline_limit: int | None = None,
    ) -> HubGrant:
        from tillpoint.agent.errors import HubUnavailable

        self.asked.append(list(coupon_codes))
        answer = self.answers.pop(0) if self.answers else frozenset()
        if answer is None:
            raise HubUnavailable("the hub is not answering")
        return HubGrant(points, answer & frozenset(coupon_codes))

    def release(self, receipt_id: str) -> bool:
        return True

    def reachable(self) -> bool:
        return True


CODES = ["C1", "C2", "C3", "C4"]


def _coupon_agent(tmp_path: Path, hub: ScriptedHub) -> Agent:
    offers = [
        {"id": f"o-{n}", "kind": "AMOUNT_OFF", "skus": ["4601234000017"],
         "value": str(1000 - 100 * n), "couponRequired": True}
        for n in range(len(CODES))
    ]  # fmt: skip
    coupons = [{"code": code, "offerId": f"o-{n}"} for n, code in enumerate(CODES)]
    agent = Agent(tmp_path / "data", "till-1", hub=hub)
    agent.load_snapshot(snapshot(offers=offers, coupons=coupons))
    return agent


def test_online_codes_are_asked_again_at_most_once_a_code_and_a_hub_gone_mid_way_prices_offline(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §13, §9: each time the hub says the winning code is used, the next
    one comes to apply and is asked about: one request more per such code, never more;
    a hub that stops answering mid-way prices the receipt OFFLINE, the codes the hub
    said used staying ALREADY_USED. Pins what review 26's second look found right."""
    body = till_receipt("r-codes", lines=[{"sku": "4601234000017", "qty": "1", "priceMinor": 5000}])
    body["coupons"] = CODES
    every = ScriptedHub(*[frozenset(CODES)] * 10)
    agent = _coupon_agent(tmp_path / "a", every)
    try:
        done = agent.checkout(receipt_from_json(body))
        assert len(every.asked) == len(CODES)  # C1, then C2, C3, C4 as each comes to apply
        assert every.asked[0] == ["C1"] and every.asked[-1] == ["C4"]
        assert {v.code: v.reason for v in done.coupons} == dict.fromkeys(CODES, "ALREADY_USED")
        assert done.mode == "ONLINE"
    finally:
        agent.close()
    gone = ScriptedHub(frozenset({"C1"}), None)
    agent = _coupon_agent(tmp_path / "b", gone)
    try:
        done = agent.checkout(receipt_from_json(body))
        assert len(gone.asked) == 2
        assert done.mode == "OFFLINE"
        verdicts = {v.code: (v.status, v.reason) for v in done.coupons}
        assert verdicts["C1"] == ("REJECTED", "ALREADY_USED")
        assert verdicts["C2"] == ("APPLIED", "")
    finally:
        agent.close()
