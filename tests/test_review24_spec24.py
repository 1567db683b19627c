"""Review 24 (spec24): findings of the combination scenarios in tests/scenarios/review24/,
each with the test that failed before its fix."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI, free_port, snapshot
from .conftest import http_post as _post
from .test_review23_cli23 import (  # the fixture: `tillpoint run` on a data dir
    forwarded_problems,
    serve,  # noqa: F401
)
from .test_scenarios import OWN_SCENARIOS

EXE = Path(sys.executable).parent / "tillpoint"

EXPIRES = "2026-12-15T23:59:59+03:00"


def _zoya() -> dict[str, Any]:
    """c-b with 100 points, all of them expiring on 15 December."""
    snap = snapshot()
    for customer in snap["customers"]:
        if customer["id"] == "c-b":
            customer["balancePoints"] = 100
            customer["expiring"] = [{"points": 100, "expiresAt": EXPIRES}]
    return snap


def _receipt(receipt_id: str, at: str, redeem: int) -> dict[str, Any]:
    return {
        "receiptId": receipt_id,
        "storeId": "s1",
        "tillId": "t1",
        "at": at,
        "card": "2770000000024",
        "lines": [{"sku": "4601234000055", "qty": "1", "priceMinor": 100000}],
        "redeemPoints": redeem,
    }


def test_an_open_hold_takes_its_points_out_of_the_expiring_batches_too(cli: CLI) -> None:
    """§16 × §11: another receipt priced while a hold is open counted the hold's points out
    of `availablePoints` but left them in `expiring` (59 available, 90 listed to expire on
    15 December, and the display warned of 90): the batch holds 100 - 60 held - 10 spent."""
    assert cli("snapshot", "load", _zoya(), "--json").code == 0
    held = cli("hold", _receipt("r1", "2026-12-10T10:00:00+03:00", 60), "--json").json()
    assert held["redeemedPoints"] == 60
    # 100000 - 1000 redeemed: 99000 * 3 / 10000 = 29.7 -> 29 earned, never expiring
    sale = cli("checkout", _receipt("r2", "2026-12-10T10:05:00+03:00", 10), "--json").json()
    assert sale["redeemedPoints"] == 10 and sale["earnedPoints"] == 29
    assert sale["balance"] == {
        "availablePoints": 59,
        "pendingPoints": 0,
        "expiring": [{"points": 30, "expiresAt": EXPIRES}],
    }
    # a quote beside the hold: 59 may be spent (percent cap 300), the 30 expiring first
    quote = cli("quote", _receipt("q1", "2026-12-10T10:06:00+03:00", 20), "--json").json()
    assert quote["balance"]["availablePoints"] == 59 - 20 + 29
    assert quote["balance"]["expiring"] == [{"points": 10, "expiresAt": EXPIRES}]
    # and once the hold is confirmed the ledger says the same as the results did
    confirmed = cli("confirm", "r1", "--json").json()
    assert confirmed["state"] == "CONFIRMED"
    after = cli("balance", "2770000000024", "--at", "2026-12-10T10:07:00+03:00", "--json").json()
    assert after == {
        "availablePoints": 30 + 28 + 29,
        "pendingPoints": 0,
        "expiring": [{"points": 30, "expiresAt": EXPIRES}],
    }


# ---------------------------------------------------------------- one receipt, two doors


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Callable[[], int]]:
    """`tillpoint run` on the `cli` fixture's data directory; answers its HTTP port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        http_port = free_port()
        conf = tmp_path / "till.toml"
        conf.write_text(
            f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[metrics]\nenabled = false\n'
            f'[http]\nlisten = "127.0.0.1:{http_port}"\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        env["TILLPOINT_DEVICE_ID"] = "till-1"
        proc = subprocess.Popen(
            [EXE, "--config", conf, "--data-dir", tmp_path / "data", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return http_port
                conn.close()
            except OSError:
                pass
            assert proc.poll() is None, "tillpoint run stopped"
            assert time.monotonic() < deadline, "tillpoint run never became healthy"
            time.sleep(0.05)

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_receipt_committed_at_the_cli_is_retried_and_confirmed_over_http(
    cli: CLI, run_agent: Callable[[], int]
) -> None:
    """§11 × §12: the same receipt through different doors. A checkout and a hold made with
    the CLI before `tillpoint run` starts are answered over HTTP as the CLI answers them
    (§12: the same document): a Checkout retried, a Confirm of the checked-out receipt
    (what it returned the first time), a Confirm of the CLI's hold; a changed body is 409,
    a Cancel of a confirmed receipt is refused, and a refund retried across doors is one."""
    r1 = _receipt("door-1", "2026-12-10T10:00:00+03:00", 10)
    r2 = _receipt("door-2", "2026-12-10T10:05:00+03:00", 5)
    assert cli("snapshot", "load", snapshot(), "--json").code == 0
    first = cli("checkout", r1, "--json")
    held = cli("hold", r2, "--json")
    assert first.code == 0 and held.json()["state"] == "HELD"
    port = run_agent()

    status, body = _post(port, "/v1/checkout", r1)
    assert status == 200 and body.decode() == first.out
    status, body = _post(port, "/v1/confirm", {"receiptId": "door-1"})
    assert status == 200 and json.loads(body) == first.json()

    status, body = _post(port, "/v1/confirm", {"receiptId": "door-2", "fiscalDocument": "FD-2"})
    confirmed = json.loads(body)
    assert status == 200 and confirmed["state"] == "CONFIRMED"
    assert confirmed["lines"] == held.json()["lines"]
    again = cli("confirm", "door-2", "--json")  # forwarded to the serving agent
    assert again.code == 0 and again.out == body.decode()

    status, _ = _post(port, "/v1/hold", dict(r2, redeemPoints=6))
    assert status == 409
    status, body = _post(port, "/v1/cancel", {"receiptId": "door-1"})
    assert status == 412 and "use a refund" in body.decode()  # FAILED_PRECONDITION

    refund = {
        "refundId": "door-f1",
        "receiptId": "door-1",
        "at": "2026-12-11T10:00:00+03:00",
        "lines": [{"sku": "4601234000055", "qty": "1"}],
    }
    status, body = _post(port, "/v1/refund", refund)
    assert status == 200
    assert cli("refund", refund, "--json").out == body.decode()
    changed = dict(refund, lines=[{"sku": "4601234000055", "qty": "0.5"}])
    assert cli("refund", changed, "--json").code == 2
    assert _post(port, "/v1/refund", changed)[0] == 409
    # the customer's points moved once: 100 - 10 - 5 + 29 + 29, the refund +10 - 29
    balance = cli("balance", "2770000000024", "--at", "2026-12-11T10:00:00+03:00", "--json")
    assert balance.json()["availablePoints"] == 80 - 10 - 5 + 29 + 29 + 10 - 29


# ---------------------------------------------------------------- holds beside receipts (seeded)


def _expiring_problems(balance: dict[str, Any] | None, where: str) -> list[str]:
    """§16: `expiring` lists at most 3 batches that still hold points, never more points
    than are available (while a debt is owed, none)."""
    if balance is None:
        return []
    listed = balance.get("expiring", [])
    problems = []
    if len(listed) > 3 or any(batch["points"] <= 0 for batch in listed):
        problems.append(f"{where}: {listed}")
    if sum(batch["points"] for batch in listed) > max(0, balance["availablePoints"]):
        problems.append(f"{where}: more listed to expire than available: {balance}")
    return problems


def _life_of_holds(cli: CLI, seed: int) -> list[str]:
    rng = random.Random(seed)
    days = ["2026-12-11T23:59:59+03:00", "2026-12-12T23:59:59+03:00", "2026-12-20T23:59:59+03:00"]
    batches = [
        {"points": rng.choice([10, 40, 100, 250]), "expiresAt": d}
        for d in days[: rng.randint(1, 3)]
    ]
    snap = snapshot()
    snap["program"] = dict(
        snap["program"],
        offlineRedeemLimitPoints=rng.choice([60, 100000]),
        maxRedeemPercent=rng.choice([30, 100]),
        activationDelayDays=rng.choice([0, 0, 1]),
        pointsLifetimeDays=rng.choice([0, 2, 5]),
    )
    for customer in snap["customers"]:
        if customer["id"] == "c-b":
            customer["expiring"] = batches
            customer["balancePoints"] = sum(b["points"] for b in batches) + rng.choice([0, 30])
    assert cli("snapshot", "load", snap, "--json").code == 0
    problems: list[str] = []
    open_holds: list[str] = []
    for step in range(rng.randint(4, 9)):
        at = rng.choice(
            ["2026-12-10T10:00:00+03:00", "2026-12-11T10:00:00+03:00", "2026-12-12T23:00:00+03:00"]
        )
        receipt = _receipt(f"r{step}", at, rng.choice([-1, 0, 20, 60, 150]))
        receipt["lines"][0]["priceMinor"] = rng.choice([5000, 20000, 100000])
        call = rng.choice(["hold", "hold", "checkout", "quote", "confirm", "cancel"])
        if call in ("confirm", "cancel"):
            if not open_holds:
                continue
            answer = cli(call, open_holds.pop(rng.randrange(len(open_holds))), "--json")
        else:
            answer = cli(call, receipt, "--json")
            if call == "hold":
                open_holds.append(receipt["receiptId"])
        assert answer.code == 0, answer.err
        problems += _expiring_problems(answer.json()["balance"], f"seed {seed} {call} r{step}")
    return problems


@pytest.mark.parametrize("seed", range(3))
def test_holds_beside_receipts_never_list_reserved_points_to_expire(cli: CLI, seed: int) -> None:
    assert _life_of_holds(cli, seed) == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 60))
def test_holds_beside_receipts_never_list_reserved_points_to_expire_long(
    cli: CLI, seed: int
) -> None:
    assert _life_of_holds(cli, seed) == []


def test_a_debt_counted_at_once_is_not_listed_as_points_to_expire(cli: CLI) -> None:
    """§16 with a debt (found by the seeded holds fuzz of review 24): a refund took back
    points another sale had spent (a debt of 33, dated 13 December); asked at a time
    before it (a receipt dated earlier, a Balance --at), the debt counts at once and the
    balance was -23 while the 10 points expiring on 12 December were still listed: the
    customer cannot spend them, the debt takes them first (soonest-expiring first)."""
    snap = snapshot()
    snap["program"] = dict(snap["program"], pointsLifetimeDays=5)
    for customer in snap["customers"]:
        if customer["id"] == "c-b":
            customer["balancePoints"] = 10
            customer["expiring"] = [{"points": 10, "expiresAt": "2026-12-12T23:59:59+03:00"}]
    assert cli("snapshot", "load", snap, "--json").code == 0
    # 13.12: the 10 have expired; r0 earns 50 (100000 * 5%... base 3%: 30)
    r0 = _receipt("r0", "2026-12-13T10:00:00+03:00", 0)
    assert cli("checkout", r0, "--json").json()["earnedPoints"] == 30
    r1 = _receipt("r1", "2026-12-13T10:00:00+03:00", 30)  # spends r0's 30
    assert cli("checkout", r1, "--json").json()["redeemedPoints"] == 30
    refund = {
        "refundId": "f0",
        "receiptId": "r0",
        "at": "2026-12-13T12:00:00+03:00",
        "lines": [{"sku": "4601234000055", "qty": "1"}],
    }
    # r1 earned (100000 - 3000) * 3 / 10000 = 29.1 -> 29; r0's 30 go: 29 from r1's, 1 owed
    assert cli("refund", refund, "--json").json()["balance"]["availablePoints"] == -1
    # before the 10 expired: 10 spendable, the debt of 1 counts at once and takes them first
    early = cli("balance", "2770000000024", "--at", "2026-12-10T12:00:00+03:00", "--json").json()
    assert early["availablePoints"] == 10 + 29 - 29 - 1
    assert early["expiring"] == [{"points": 9, "expiresAt": "2026-12-12T23:59:59+03:00"}]


# ---------------------------------------------------------------- the scenarios, forwarded

# pricing with explain and retries, a delta between Hold and Confirm, holds beside sales,
# refunds into batches, a hold's TTL, int64 refusals, a debt dated later
FORWARDED = [
    "c24_quantity_price_personal_and_coupon_offer_split_lines",
    "c24_hold_in_window_then_offer_and_coupon_removed_confirm_commits_held",
    "c24_receipt_beside_open_hold_expiring_batches",
    "c24_idempotency_hold_checkout_confirm_cancel_refund",
    "c24_expiring_spend_then_refunds_in_parts_return_to_batches",
    "c24_hold_ttl_expiry_releases_offline_limit_and_coupon",
    "c24_int64_edges_through_pricing",
    "c24_debt_dated_later_is_not_listed_to_expire",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", FORWARDED)
def test_review24_scenario_through_a_serving_agent(
    name: str,
    serve: Any,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The hand-worked scenarios again with `tillpoint run` serving the data directory: every
    call after the first snapshot goes the forwarded way and prints what the local way does."""
    problems = forwarded_problems(
        OWN_SCENARIOS / "review24" / f"{name}.json", serve, tmp_path, monkeypatch, capsys
    )
    assert not problems, "\n".join(problems)
