"""Session 20's audit findings, each a test that failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.sync.push import Pusher

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return data


def test_quote_explain_of_a_committed_receipt_carries_a_trace(tmp_path: Path) -> None:
    """§17: `quote FILE --explain` adds the trace — also after the sale, when support asks
    "why this price?" with the receipt's own file. The figures stay the committed ones."""
    data = tmp_path / "till"
    command = [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(data)]
    env = {"TILLPOINT_DEVICE_ID": "till-1", "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> dict[str, object]:
        done = subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr
        answer: dict[str, object] = json.loads(done.stdout)
        return answer

    subprocess.run(
        [*command, "snapshot", "load", str(EXAMPLES / "snapshot.json")],
        check=True,
        capture_output=True,
        timeout=60,
        env=env,
    )
    receipt = str(EXAMPLES / "receipt-redemption.json")
    before = cli("quote", receipt, "--explain", "--json")
    sold = cli("checkout", receipt, "--json")
    after = cli("quote", receipt, "--explain", "--json")
    first, now = before["trace"], after["trace"]
    assert isinstance(first, dict) and isinstance(now, dict)
    assert now["lines"] == first["lines"]  # why each line got what it got
    # the caps are the sale's: its own points and offline use are left out (review 26)
    assert now["redemption"]["boundBy"] == first["redemption"]["boundBy"] == "PERCENT"
    assert now["redemption"] == first["redemption"]
    assert now["redemption"]["allowedPoints"] == sold["redeemedPoints"]
    for key in ("lines", "totalMinor", "discountMinor", "redeemedPoints", "payableMinor"):
        assert after[key] == sold[key]
    assert after["balance"] == sold["balance"]  # the committed answer, not counted twice


def test_no_trace_when_pricing_again_gives_other_figures(tmp_path: Path) -> None:
    """A committed receipt priced again after the snapshot changed its offer: the figures
    differ, and a trace of that pricing would explain another price: none is added (a
    checkout with explain keeps its own). A sale that spent the whole balance is priced
    again with its own points left out (review 26: it got no trace, its own spending had
    emptied the balance it was priced with), so its trace is added."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        snapshot = _load("snapshot.json")
        customers = snapshot["customers"]
        assert isinstance(customers, list)
        for customer in customers:
            if customer["id"] == "c-1":
                customer["balancePoints"] = 30
                customer.pop("expiring", None)
        agent.load_snapshot(snapshot)
        body = {**_load("receipt-redemption.json"), "redeemPoints": -1}
        sold = agent.checkout(receipt_from_json(body))
        assert sold.redeemed_points == 30
        again = agent.quote(receipt_from_json({**body, "explain": True}))
        assert (again.lines, again.redeemed_points) == (sold.lines, sold.redeemed_points)
        assert again.trace is not None
        assert again.trace["redemption"]["boundBy"] == "BALANCE"
        assert again.trace["redemption"]["caps"][0] == {"name": "BALANCE", "points": 30}
        offers = snapshot["offers"]
        assert isinstance(offers, list)
        agent.load_snapshot({**snapshot, "version": 8, "offers": offers[1:]})  # o-1 went
        again = agent.quote(receipt_from_json({**body, "explain": True}))
        assert (again.lines, again.redeemed_points) == (sold.lines, sold.redeemed_points)
        assert again.trace is None
        fresh = agent.quote(receipt_from_json({**body, "receiptId": "new", "explain": True}))
        assert fresh.trace is not None and fresh.lines != sold.lines
    finally:
        agent.close()


def test_a_failed_mark_question_is_a_failure_of_the_link(tmp_path: Path) -> None:
    """The first thing a till asks the hub is its mark (`learn_mark`); when that failed,
    the link still said online and the loop logged grpc's raw multi-line error."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=1)
        hub.stop()
        with pytest.raises(grpc.RpcError):
            pusher.learn_mark()
        assert till.link.last_failure and "\n" not in till.link.last_failure
        assert not till.link.online
        assert not pusher.mark_known
        pusher.close()
    finally:
        till.stop()


def test_a_scanned_text_with_a_leading_dash_is_the_text_else_told_how_to_give_it(
    tmp_path: Path,
) -> None:
    """A scanned "-2770000000017-" is the text (review 25: dashes of any kind are dropped,
    docs/CONTRACT.md §4; it used to be refused with this hint); the hint stays for what
    argparse still refuses (a second text beside it)."""
    command = [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(tmp_path)]
    done = subprocess.run(
        [*command, "identify", "-2770000000017-"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "UNKNOWN\n", "")
    done = subprocess.run(
        [*command, "identify", "-2770000000017-", "extra"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "goes after --: -- -2770000000017-" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_quote_explain_of_a_sale_whose_card_was_blocked_since_answers(tmp_path: Path) -> None:
    """The committed figures are answered whatever the card is now; pricing again for the
    trace is refused for a card blocked since the sale, and that refused the quote."""
    agent = Agent(tmp_path / "till", "till-1")
    try:
        snapshot = _load("snapshot.json")
        agent.load_snapshot(snapshot)
        body = _load("receipt-redemption.json")
        sold = agent.checkout(receipt_from_json(body))
        cards = snapshot["cards"]
        assert isinstance(cards, list)
        for card in cards:
            card["status"] = "BLOCKED"
        agent.load_snapshot({**snapshot, "version": int(str(snapshot["version"])) + 1})
        plain = agent.quote(receipt_from_json(body))
        explained = agent.quote(receipt_from_json({**body, "explain": True}))
        assert explained.payable_minor == plain.payable_minor == sold.payable_minor
        assert explained.trace is None
    finally:
        agent.close()
