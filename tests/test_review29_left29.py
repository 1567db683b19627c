"""Review 29 (left29): items earlier sessions left open, each through a public door
(the CLI with --json, HTTP to a real server, gRPC on 127.0.0.1, a real hub)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data, timings
from tillpoint.sync.pull import Puller

CARD = "2770000000017"
SKU = "4601234000017"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's refusals
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    doc = json.loads(out) if out.strip() and "--json" in argv else out
    return code, doc, err


# ---------------------------------------------------------------- 1. sync now, a deadline


@pytest.mark.slow  # ~3.5 s: 20 sales, a hub restart, then the 1.5 s deadline
def test_sync_now_over_a_link_that_keeps_timing_out_ends_at_its_deadline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §9 (`sync now` has one deadline): a hub that answers the first
    call but never a push in time made `tillpoint sync now` halve its batch and try again
    at every timeout, down to one sale: about 8 × `hub.call_timeout_ms` before it said
    anything. The whole command now ends by `--timeout` seconds with one line saying so
    and exit 1; the sales stay in the outbox."""
    released = threading.Event()
    real_push = HubServicer.PushTransactions

    def slow_push(self: HubServicer, request: Any, context: Any) -> Any:
        released.wait(10)  # longer than the till waits for any call
        return real_push(self, request, context)

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    data = tmp_path / "till-1"
    till = hub.till("till-1", data, start=False, timings=timings(call_timeout_s=2.0))
    try:
        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        for i in range(20):
            till.agent.checkout(receipt_from_json(receipt(f"r-{i:03d}", CARD)))
        till.stop()
        monkeypatch.setattr(HubServicer, "PushTransactions", slow_push)
        hub.restart()
        monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
        monkeypatch.setenv("TILLPOINT_HUB__ADDRESS", f"127.0.0.1:{hub.port}")
        monkeypatch.setenv("TILLPOINT_HUB__CALL_TIMEOUT_MS", "600")
        started = time.monotonic()
        code, out, err = run(
            capsys, "sync", "now", "--data-dir", str(data), "--timeout", "1.5", "--json"
        )
        took = time.monotonic() - started
        assert code == 1, err
        assert out == ""
        assert took < 2.5, took  # 8 pushes of 0.6 s took 4.8 s
        assert err.count("\n") == 1 and err.startswith("tillpoint: "), err
        assert "1.5 s" in err and "--timeout" in err, err
        assert "20 transaction(s) still in the outbox" in err, err
        released.set()
        code, doc, err = run(capsys, "status", "--data-dir", str(data), "--json")
        assert code == 0, err
        assert doc["outboxDepth"] == 20, doc
    finally:
        released.set()
        hub.stop()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc"])
def test_sync_now_refuses_a_timeout_that_is_not_a_positive_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """docs/CONTRACT.md §10: bad input is exit 2 and one line, before anything is asked."""
    code, _, err = run(capsys, "sync", "now", "--data-dir", str(tmp_path), "--timeout", value)
    assert code == 2
    assert err.count("\n") == 1 and "--timeout" in err, err


# ---------------------------------------------------------------- 2. coupon re-asks, one deadline

MILK = SKU
CODES = ["C1", "C2", "C3", "C4"]


def _coupon_sale(receipt_id: str, *codes: str) -> Any:
    return receipt_from_json(
        {
            "receiptId": receipt_id,
            "at": "2026-11-23T10:15:00+03:00",
            "card": CARD,
            "lines": [{"sku": MILK, "qty": "1", "priceMinor": 5000}],
            "coupons": list(codes),
        }
    )


@pytest.mark.slow  # ~3.4 s: a hub, two tills, three sales, then the slow hub
def test_a_checkout_asking_the_hub_again_for_each_code_waits_one_deadline_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/CONTRACT.md §9, §13: the hub authorises a checkout's coupon codes within
    `hub.redeem_timeout_ms`, otherwise the till's offline rules apply. Each time the hub
    said the winning code was used, the receipt was priced again and the next code asked
    about, each request with a deadline of its own: a hub answering just within it made a
    checkout with four codes wait four deadlines. All the requests of one checkout now
    share one deadline; when it is spent the receipt is priced OFFLINE."""
    delay = [0.0]
    real_authorize = HubServicer.AuthorizeRedemption

    def slow_authorize(self: HubServicer, request: Any, context: Any) -> Any:
        time.sleep(delay[0])
        return real_authorize(self, request, context)

    monkeypatch.setattr(HubServicer, "AuthorizeRedemption", slow_authorize)
    offers = [
        {"id": f"o-{n}", "kind": "AMOUNT_OFF", "skus": [MILK], "value": str(1000 - 100 * n),
         "couponRequired": True}
        for n in range(len(CODES))
    ]  # fmt: skip
    coupons = [{"code": code, "offerId": f"o-{n}"} for n, code in enumerate(CODES)]
    hub = LoopbackHub(
        tmp_path / "hub", data=sample_master_data() | {"offers": offers, "coupons": coupons}
    )
    tills = []
    try:
        for name in ("a", "b"):
            till = hub.till(
                name, tmp_path / name, start=False, timings=timings(redeem_timeout_s=0.5)
            )
            tills.append(till)
            Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        a, b = tills
        for n, code in enumerate(CODES[:3]):  # till b, online, uses C1, C2, C3
            used = b.agent.checkout(_coupon_sale(f"b-{n}", code))
            assert (used.mode, used.coupons[0].status) == ("ONLINE", "APPLIED")
        delay[0] = 0.3  # the hub answers each request in 0.3 s, within the 0.5 s deadline
        started = time.monotonic()
        done = a.agent.checkout(_coupon_sale("a-1", *CODES))
        took = time.monotonic() - started
        assert took < 0.9, took  # four requests of 0.3 s each took 1.2 s
        # C1: the hub said used (0.3 s); C2 came to apply, and the 0.2 s left ran out
        assert done.mode == "OFFLINE"
        verdicts = {v.code: (v.status, v.reason) for v in done.coupons}
        assert verdicts["C1"] == ("REJECTED", "ALREADY_USED")
        assert verdicts["C2"] == ("APPLIED", "")
        # a hub within the deadline for all its answers: ONLINE, as before
        delay[0] = 0.05
        online = a.agent.checkout(_coupon_sale("a-2", "C3", "C4"))
        assert online.mode == "ONLINE"
        assert [(v.code, v.status) for v in online.coupons] == [
            ("C3", "REJECTED"),
            ("C4", "APPLIED"),
        ]
    finally:
        for till in tills:
            till.stop()
        hub.stop()


# ---------------------------------------------------------------- 3. the greeting, narrow


def _shown(lines: list[str], columns: int) -> list[str]:
    """What the display driver writes for `lines` on a `columns` × 2 screen, read back."""
    from tillpoint.printer.config import DisplayConfig
    from tillpoint.printer.display import message_bytes
    from tillpoint.printer.virtual_display import DisplayScreen

    config = DisplayConfig(kind="serial", device="loop://", columns=columns)
    screen = DisplayScreen(columns=columns)
    screen.feed(message_bytes(lines, config))
    return list(screen.text)


@pytest.mark.parametrize("columns", [8, 9, 10, 11, 12, 16])
def test_the_greeting_on_a_narrow_display_never_cuts_a_word(columns: int) -> None:
    """docs/CONTRACT.md §8: messages fit the display, reworded or wrapped, never cut.
    `greeting(name, balance, width)` on 8–11 columns gave "Добрый." over "Анна!" and
    "Здравст." over "Б: 1192", and the display driver showed the 20-column greeting over
    its balance as "Анна." over "1192". Both now give whole words: the greeting row keeps
    "Добрый день" (11 columns) or the name alone ("Анна!"), or stays empty; `greeting`
    for a width is what the driver shows."""
    from tillpoint.printer.messages import greeting

    for name in ("Анна", "Александра", None, "Zoe"):
        for balance in (None, 1192, 5):
            made = greeting(name, balance, width=columns)
            assert made == _shown(greeting(name, balance), columns), (name, balance, made)
            assert all(len(row) <= columns for row in made)
            assert not any(w.endswith(".") for row in made for w in row.split()), made
    assert greeting("Анна", width=11) == ["Добрый день", "Анна!"]
    assert greeting("Анна", width=8) == ["Добрый", "день!"]
    assert greeting("Анна", 1192, width=columns)[0] == (
        "Добрый день" if columns == 11 else "Анна!" if columns < 11 else "Добрый день!"
    )
    assert greeting("Анна", 1192) == ["Анна, добрый день!", "Бонусы: 1192"]
