"""Review 22 (out22): the output surfaces (§7 printed offers, §8 display, §10 CLI, §17 trace)
checked against the contract's text (docs/CONTRACT.md) with real parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.layout import offers_blocks, render_escpos
from tillpoint.printer.payload import parse_payload
from tillpoint.printer.profiles import resolve_profile

from .conftest import receipt, snapshot

PRINTED = {
    "id": "o-utc",
    "campaignId": "camp-u",
    "customerId": "c-a",
    "kind": "PERCENT_OFF",
    "skus": ["4601234000024"],
    "value": "20",
    # 1 November 00:00 to 30 November 23:59:59 in Moscow, as a hub may write them: in UTC
    "validFrom": "2026-10-31T21:00:00Z",
    "validTo": "2026-11-30T20:59:59Z",
    "rank": 1,
    "printable": True,
    "printText": "Скидка на хлеб",
}


def _printed_text(agent: Agent) -> str:
    """The coupon job's ESC/POS bytes (python-escpos, 80 mm), read back as the paper's text."""
    (payload,) = agent._ledger.execute("SELECT payload FROM print_jobs").fetchone()
    profile = resolve_profile(PrinterConfig())
    data = render_escpos(offers_blocks(parse_payload(payload)), profile)
    return data.decode("cp866", errors="replace")


def test_a_coupon_prints_its_validity_and_time_in_the_stores_local_time(tmp_path: Path) -> None:
    """§2: business times are the store's local time (program.timezone). A hub or a POS
    that writes its times in UTC (RFC 3339 allows any offset) printed "по 30.11.2026 20:59"
    and "Чек r1, 23.11.2026 07:15" for a Moscow store: three hours off for the customer,
    who reads the coupon as local time. Found by out22 reading the printed bytes."""
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(
        snapshot(offers=[PRINTED, {**PRINTED, "id": "o-cpn", "rank": 2, "issueCoupon": True}])
    )
    result = agent.checkout(receipt_from_json(receipt(at="2026-11-23T07:15:00Z")))
    assert result.to_json()["printedOffers"] == ["o-utc", "o-cpn"]
    paper = _printed_text(agent)
    assert "Действует с 01.11 по 30.11.2026\n" in paper
    # the till-issued coupon is valid from the sale (10:15 in Moscow) to the offer's end
    assert "Действует с 23.11.2026 10:15 по 30.11.2026\n" in paper
    assert "Чек r1, 23.11.2026 10:15" in paper
    assert "20:59" not in paper and "07:15" not in paper
    agent.close()


def _tillpoint(args: list[str], stdout: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tillpoint.agent.cli import main; sys.exit(main())",
            *args,
        ],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env={**os.environ, "TILLPOINT_DEVICE_ID": "till-1", "TILLPOINT_CLI_LOCAL": "1"},
    )


def test_version_to_a_closed_pipe_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """§10: never a traceback. `tillpoint --version | head -c 0` printed argparse's
    traceback ending in BrokenPipeError: `--version` is written while the arguments are
    read, before the handler that words a closed stdout. Found by out22."""
    read, write = os.pipe()
    os.close(read)
    try:
        run = _tillpoint(["--version"], write)
    finally:
        os.close(write)
    assert "Traceback" not in run.stderr
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("tillpoint: ") and "output was cut off" in run.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_output_that_cannot_be_written_says_so_and_the_checkout_stands(
    tmp_path: Path,
) -> None:
    """§10: one line a person understands. A checkout whose stdout is on a full disk
    (`> /dev/full`) said "internal error: OSError: [Errno 28] ...", as if tillpoint had a
    bug, and `--version` printed a traceback. The sale is committed: the line says the
    output was lost and that what the command did stands (as for a closed pipe)."""
    data = tmp_path / "data"
    Agent(data, "till-1").load_snapshot(snapshot())
    body = tmp_path / "r.json"
    body.write_text(json.dumps(receipt()), encoding="utf-8")
    with open("/dev/full", "w") as full:
        run = _tillpoint(["--data-dir", str(data), "checkout", str(body), "--json"], full)
        version = _tillpoint(["--version"], full)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert "internal error" not in run.stderr and "could not be written" in run.stderr
    assert "stands" in run.stderr
    assert "Traceback" not in version.stderr and version.returncode == 1, version.stderr
    assert version.stderr.count("\n") == 1 and "could not be written" in version.stderr
    # the sale is committed: the same receiptId answers the stored result
    again = _tillpoint(["--data-dir", str(data), "checkout", str(body), "--json"], subprocess.PIPE)
    assert again.returncode == 0 and json.loads(again.stdout)["seq"] == 1


def test_a_receipt_offer_that_did_not_apply_for_another_reason_still_says_what_is_missing(
    tmp_path: Path,
) -> None:
    """§17: receipt offers with their threshold and, when not met, how much more the basket
    needs. An offer outside its window or waiting for its coupon gave its threshold only:
    nothing said the basket was short too, and over gRPC its `missingMinor` read 0, which
    the proto documents as "met". Found by out22."""
    base = {
        "campaignId": "camp-r",
        "kind": "RECEIPT_PERCENT_OFF",
        "skus": [],
        "value": "5",
        "minTotalMinor": 100000,
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2026-11-30T23:59:59+03:00",
    }
    offers = [
        {**base, "id": "r-coupon", "couponRequired": True},
        {**base, "id": "r-sunday", "weekdays": [7]},
        {**base, "id": "r-plain"},
        {**base, "id": "r-met", "weekdays": [7], "minTotalMinor": 100},
    ]
    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot(offers=offers))
    result = agent.quote(receipt_from_json({**receipt(), "explain": True})).to_json()
    rows = {row["offerId"]: row for row in result["trace"]["receiptOffers"]}
    basket = 17980  # 2 × 89.90, no line offer
    assert rows["r-plain"]["outcome"] == "BELOW_MIN_TOTAL"
    for offer_id, outcome in [
        ("r-coupon", "COUPON_MISSING"),
        ("r-sunday", "OUTSIDE_WINDOW"),
        ("r-plain", "BELOW_MIN_TOTAL"),
    ]:
        assert rows[offer_id]["outcome"] == outcome
        assert rows[offer_id]["minTotalMinor"] == 100000
        assert rows[offer_id]["basketMinor"] == basket
        assert rows[offer_id]["missingMinor"] == 100000 - basket, offer_id
    assert rows["r-met"]["outcome"] == "OUTSIDE_WINDOW"
    assert rows["r-met"]["missingMinor"] == 0 and rows["r-met"]["basketMinor"] == basket
    agent.close()


def test_print_preview_with_a_snapshots_offers_shows_the_stores_local_time(
    tmp_path: Path,
) -> None:
    """`print preview RESULT --offers snapshot.json` shows the coupon as the till prints
    it: the offers' validity and the sale's time in the snapshot's program.timezone (it
    showed the offsets as written, three hours off the paper for a Moscow store)."""
    snap = tmp_path / "snapshot.json"
    snap.write_text(json.dumps(snapshot(offers=[PRINTED])), encoding="utf-8")
    result = tmp_path / "result.json"
    result.write_text(
        json.dumps({"receiptId": "r1", "at": "2026-11-23T07:15:00Z", "printedOffers": ["o-utc"]}),
        encoding="utf-8",
    )
    run = _tillpoint(
        [
            "--data-dir",
            str(tmp_path / "data"),
            "print",
            "preview",
            str(result),
            "--offers",
            str(snap),
        ],
        subprocess.PIPE,
    )
    assert run.returncode == 0, run.stderr
    assert "по 30.11.2026" in run.stdout and "20:59" not in run.stdout
    assert "23.11.2026 10:15" in run.stdout and "07:15" not in run.stdout
