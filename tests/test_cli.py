"""The command line as a person and a POS script use it (the contract §10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CLI, REPO, receipt, snapshot


def _one_line_error(run: object, code: int = 2) -> None:
    assert run.code == code, (run.code, run.out, run.err)  # type: ignore[attr-defined]
    assert run.out == ""  # type: ignore[attr-defined]
    lines = run.err.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("tillpoint: ")
    assert "Traceback" not in run.err  # type: ignore[attr-defined]


def test_entry_point_runs_as_a_real_process(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "tillpoint"
    env = dict(os.environ, TILLPOINT_DEVICE_ID="till-1")
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot(), ensure_ascii=False), encoding="utf-8")
    load = subprocess.run(
        [exe, "--data-dir", tmp_path / "d", "snapshot", "load", snap, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert load.returncode == 0, load.stderr
    assert json.loads(load.stdout)["version"] == 1
    ident = subprocess.run(
        [exe, "--data-dir", tmp_path / "d", "identify", "+7 916 123-45-67", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert json.loads(ident.stdout) == {
        "status": "FOUND",
        "customerId": "c-a",
        "tier": "gold",
        "firstName": "Анна",
    }
    assert ident.stderr == ""


def test_json_output_is_one_document_and_human_output_is_readable(cli: CLI) -> None:
    assert cli("snapshot", "load", snapshot()).code == 0
    quoted = cli("quote", receipt())
    assert quoted.code == 0 and "to pay" in quoted.out and "Анна" in quoted.out
    run = cli("checkout", receipt(), "--json")
    assert run.code == 0 and run.err == ""
    assert json.loads(run.out)["receiptId"] == "r1"
    assert run.out.count("\n") == 1
    status = cli("status", "--json").json()
    assert status["cacheVersion"] == 1 and status["outboxDepth"] == 1


def test_options_after_the_command_and_stdin(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    assert cli("snapshot", "load", snapshot(), "--data-dir", other).code == 0
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(receipt())))
    run = cli("quote", "-", "--json", "--data-dir", other)
    assert run.code == 0 and run.json()["card"]["status"] == "FOUND"


@pytest.mark.parametrize(
    "args",
    [
        ("checkout", "/nonexistent/receipt.json", "--json"),
        ("balance", "2770000000017", "--at", "yesterday", "--json"),
        ("balance", "2770000000017", "--at", "2026-11-23T10:00:00", "--json"),
        ("balance", "2770000000031", "--json"),
        ("balance", "2770000000099", "--json"),
        ("frobnicate",),
        ("checkout",),
    ],
)
def test_usage_and_lookup_errors_are_one_line(cli: CLI, args: tuple[str, ...]) -> None:
    cli("snapshot", "load", snapshot())
    _one_line_error(cli(*args))


def test_malformed_json_and_floats_are_refused(cli: CLI, tmp_path: Path) -> None:
    cli("snapshot", "load", snapshot())
    broken = tmp_path / "broken.json"
    broken.write_text('{"receiptId": "r1", ', encoding="utf-8")
    _one_line_error(cli("checkout", str(broken), "--json"))
    floaty = receipt(lines=[{"sku": "4601234000017", "qty": "1", "priceMinor": 89.9}])
    run = cli("checkout", floaty, "--json")
    _one_line_error(run)
    assert "minor units" in run.err
    _one_line_error(cli("snapshot", "load", tmp_path / "missing.json"))
    assert cli("status", "--json").json()["outboxDepth"] == 0


def test_blocked_and_invalid_cards_are_refused_at_checkout(cli: CLI) -> None:
    cli("snapshot", "load", snapshot())
    blocked = cli("checkout", receipt(card="2770000000031"), "--json")
    _one_line_error(blocked)
    assert "blocked" in blocked.err
    _one_line_error(cli("checkout", receipt(card="2770000000018"), "--json"))
    _one_line_error(cli("quote", receipt(card="abc"), "--json"))
    assert cli("status", "--json").json()["outboxDepth"] == 0


def test_readme_mentions_the_two_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


def test_quote_and_checkout_explain(cli: CLI) -> None:
    offers = [
        {"id": "o-10", "kind": "PERCENT_OFF", "skus": ["4601234000017"], "value": "10"},
        {"id": "o-5", "kind": "PERCENT_OFF", "categories": ["dairy"], "value": "5"},
        {"id": "o-fri", "kind": "PERCENT_OFF", "categories": ["food"], "value": "50"}
        | {"weekdays": [5]},
        {"id": "o-r", "kind": "RECEIPT_PERCENT_OFF", "value": "5", "minTotalMinor": 30000},
    ]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    plain = cli("quote", receipt(), "--json").json()
    explained = cli("quote", receipt(), "--explain", "--json").json()
    trace = explained.pop("trace")
    # the trace changes nothing else, the display included (§17): the savings are shown
    assert explained["display"] == ["Итого: 179,80", "Скидка: 17,98"]
    assert "trace" not in plain and explained == plain
    # 2 × 89.90 = 179.80: o-10 17.98 beats o-5 8.99; o-fri is Friday only (23 Nov: Monday)
    assert trace["lines"][0]["offers"] == [
        {"offerId": "o-10", "kind": "PERCENT_OFF", "outcome": "APPLIED", "discountMinor": 1798},
        {
            "offerId": "o-5",
            "kind": "PERCENT_OFF",
            "outcome": "BEATEN",
            "discountMinor": 899,
            "beatenBy": "o-10",
            "beatenByDiscountMinor": 1798,
        },
        {"offerId": "o-fri", "kind": "PERCENT_OFF", "outcome": "OUTSIDE_WINDOW"},
    ]
    # 179.80 − 17.98 = 161.82 in the basket; 300.00 needed: 138.18 more
    (receipt_offer,) = trace["receiptOffers"]
    assert receipt_offer["outcome"] == "BELOW_MIN_TOTAL"
    assert receipt_offer["missingMinor"] == 30000 - 16182
    human = cli("checkout", receipt(), "--explain")
    assert human.code == 0
    assert "o-5 PERCENT_OFF: BEATEN −8,99 by o-10 (−17,98)" in human.out
    assert "o-fri PERCENT_OFF: OUTSIDE_WINDOW" in human.out
    assert "138,18 more needed" in human.out


def test_a_beaten_multiplier_in_the_text_trace_shows_no_money(cli: CLI) -> None:
    """A bonus multiplier gives points, not money: the text trace said "BEATEN by o-x7
    (−0,00)" for the smaller one (both above the birthday's x5); a 0 is left out."""
    offers = [
        {"id": "o-x7", "kind": "BONUS_MULTIPLIER", "skus": ["4601234000017"], "value": "7"},
        {"id": "o-x6", "kind": "BONUS_MULTIPLIER", "skus": ["4601234000017"], "value": "6"},
    ]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    human = cli("quote", receipt(), "--explain")
    assert human.code == 0, human.err
    assert "o-x6 BONUS_MULTIPLIER: BEATEN by o-x7\n" in human.out + "\n", human.out
    assert "(−0,00)" not in human.out
