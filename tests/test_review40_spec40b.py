"""Review 40 (spec40b): a black-box check of the contract's §6 (refunds), §10 (the command
line) and §9 (sync), written from docs/CONTRACT.md and the README alone.

- §10: every till command of the table given bad input of every kind (missing and unknown
  options, malformed JSON, wrong types, fractions of money, negative quantities, an
  unknown card or receipt, a file that does not exist or is a directory, empty standard
  input) exits 2 with one readable line on stderr and no trace, and leaves the cache and
  the ledger byte for byte as they were; a damaged ledger and a stdout that takes nothing
  (environment faults) exit 1; every `--json` answer is one JSON document; `snapshot
  load` of a pipe named as a file (`/dev/stdin`, `<(…)`, a FIFO) reads it once.
- §6: an independent model of the split refund (floor(p × r / q) given back, floor(e × r /
  q) taken back, each refund the difference from the ones before; receipt-level
  `EXTRA_POINTS` taken back with the last of the receipt; taken-back points off the
  receipt's own pending points first; a balance below zero said by `negativeBalance`)
  over seeded stories of sales and refunds through the CLI, compared figure by figure;
  a refund sent again (same body: the stored result; another body: refused).
- §9: a real `tillpoint hub serve` and a till's `tillpoint sync now`: a snapshot signed
  with another key, one whose payload was cut short, and an older one (a hub restored
  from a backup) are refused with a clear line, the cache as it was; the outbox reaches
  the hub exactly once across a hub killed and started again, also when the till never
  heard the hub's acknowledgement and sends the same sequence numbers again.

The stories' further seeds are `slow` (`make test-all`); the default part runs a few.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.cli import main

from tests.conftest import free_port, snapshot

EXE = str(Path(sys.executable).with_name("tillpoint"))
ANNA = "2770000000017"  # c-a, gold, 1,200 points
BORIS = "2770000000024"  # c-b, base, 80 points
STRANGER = "2770000000093"  # a valid card number the snapshot does not have: UNKNOWN
MILK, BREAD, CIGS, CHEESE = "4601234000017", "4601234000024", "4601234000031", "4601234000055"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(data_dir: Path, *args: str, stdin: str | None = None) -> Run:
    """`tillpoint --data-dir DATA ARGS` in this process (as the suite's `cli` fixture)."""
    argv = ["--data-dir", str(data_dir), *args]
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        sys.stdin = old_stdin
    return Run(code, out.getvalue(), err.getvalue())


def write(path: Path, doc: Any) -> str:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False), "utf-8")
    return str(path)


def state(data_dir: Path) -> dict[str, bytes]:
    """The bytes of the data directory's cache and ledger (their WAL files included)."""
    files = {}
    for path in sorted(data_dir.iterdir()):
        if path.name.startswith(("cache", "ledger")) and not path.name.endswith("-shm"):
            files[path.name] = path.read_bytes()
    return files


# ---------------------------------------------------------------- §10: bad input at every command

AT = "2026-11-23T10:15:00+03:00"
LATER = "2026-11-24T12:00:00+03:00"


def sale(receipt_id: str, card: str = ANNA, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "receiptId": receipt_id,
        "storeId": "s1",
        "tillId": "t1",
        "at": AT,
        "card": card,
        "lines": [
            {"sku": MILK, "qty": "3", "priceMinor": 8990},
            {"sku": BREAD, "qty": "2", "priceMinor": 5000},
        ],
        "redeemPoints": 100,
    }
    doc.update(changes)
    return doc


def back(refund_id: str, receipt_id: str = "r1", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "refundId": refund_id,
        "receiptId": receipt_id,
        "at": LATER,
        "lines": [{"sku": MILK, "qty": "1"}],
    }
    doc.update(changes)
    return doc


@pytest.fixture(scope="module", autouse=True)
def device_id() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TILLPOINT_DEVICE_ID", "till-1")
        yield


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A till at snapshot version 5 with sale r1 committed and receipt h1 held."""
    root = tmp_path_factory.mktemp("seeded")
    data = root / "data"
    snap = snapshot(version=5, issuedAt="2026-11-23T03:00:00Z")
    assert run_cli(data, "snapshot", "load", write(root / "snap.json", snap)).code == 0
    assert run_cli(data, "checkout", write(root / "r1.json", sale("r1")), "--json").code == 0
    assert run_cli(data, "hold", write(root / "h1.json", sale("h1")), "--json").code == 0
    return data


def receipt_cases() -> list[tuple[str, Any]]:
    """(what, receipt body) pairs the rules refuse; each is tried at quote, checkout and hold."""
    line = {"sku": MILK, "qty": "1", "priceMinor": 8990}

    def lines(**changes: Any) -> dict[str, Any]:
        return sale("bad-1", lines=[{**line, **changes}])

    return [
        ("malformed JSON", '{"receiptId": "bad-1", "lines": ['),
        ("a JSON array", "[1, 2]"),
        ("a number", "42"),
        ("empty file", ""),
        ("price a fraction", lines(priceMinor=89.9)),
        ("price with a decimal point", lines(priceMinor=8990.0)),
        ("price a word", lines(priceMinor="ninety")),
        ("price a boolean", lines(priceMinor=True)),
        ("price negative", lines(priceMinor=-1)),
        ("price past int64", lines(priceMinor=2**63)),
        ("amount a fraction", lines(amountMinor=1.5)),
        ("amount negative", lines(amountMinor=-100)),
        ("qty negative", lines(qty="-1")),
        ("qty zero", lines(qty="0")),
        ("qty four decimals", lines(qty="1.0001")),
        ("qty a number", lines(qty=1)),
        ("qty a list", lines(qty=["1"])),
        ("sku a number", lines(sku=4601234000017)),
        ("unknown line field", lines(colour="red")),
        ("redeemPoints a fraction", sale("bad-1", redeemPoints=1.5)),
        ("redeemPoints negative", sale("bad-1", redeemPoints=-5)),
        ("redeemPoints a word", sale("bad-1", redeemPoints="many")),
        ("no lines", sale("bad-1", lines=[])),
        ("lines an object", sale("bad-1", lines=line)),
        ("a null line", sale("bad-1", lines=[None])),
        ("unknown field", sale("bad-1", discount=5)),
        ("receiptId too long", sale("x" * 129)),
        ("receiptId blank", sale("   ")),
        ("receiptId a number", sale("bad-1", receiptId=7)),
        ("at without offset", sale("bad-1", at="2026-11-23T10:15:00")),
        ("at not a time", sale("bad-1", at="yesterday")),
        ("card bad check digit", sale("bad-1", card="2770000000018")),
        ("card with letters", sale("bad-1", card="27700000000AB")),
        ("total past int64", sale("bad-1", lines=[{**line, "qty": "999", "priceMinor": 2**62}])),
    ]


def refund_cases() -> list[tuple[str, Any]]:
    return [
        ("malformed JSON", '{"refundId": "x",'),
        ("empty file", ""),
        ("a JSON list", [back("x")]),
        ("qty negative", back("x", lines=[{"sku": MILK, "qty": "-1"}])),
        ("qty zero", back("x", lines=[{"sku": MILK, "qty": "0"}])),
        ("qty four decimals", back("x", lines=[{"sku": MILK, "qty": "0.0001"}])),
        ("qty a number", back("x", lines=[{"sku": MILK, "qty": 1}])),
        ("qty a fraction number", back("x", lines=[{"sku": MILK, "qty": 0.5}])),
        ("qty more than bought", back("x", lines=[{"sku": MILK, "qty": "4"}])),
        ("qty more over two lines", back("x", lines=[{"sku": MILK, "qty": "2"}] * 2)),
        ("sku not on the receipt", back("x", lines=[{"sku": CHEESE, "qty": "1"}])),
        ("a price on a line", back("x", lines=[{"sku": MILK, "qty": "1", "priceMinor": 1}])),
        ("no lines", back("x", lines=[])),
        ("no refundId", {k: v for k, v in back("x").items() if k != "refundId"}),
        ("refundId a number", back("x", refundId=12)),
        ("refundId blank", back("  ")),
        ("refundId too long", back("x" * 129)),
        ("refundId with a line break", back("x\ny")),
        ("unknown field", back("x", reason="broken")),
        ("unknown receipt", back("x", receiptId="never-sold")),
        ("receipt only held", back("x", receiptId="h1")),
        ("before the sale", back("x", at="2026-11-22T10:00:00+03:00")),
        ("at without offset", back("x", at="2026-11-24T12:00:00")),
    ]


def other_cases(root: Path) -> list[tuple[str, list[str], str | None]]:
    """(what, argv, standard input) of the other commands' bad input."""
    folder = root / "a-folder"
    folder.mkdir(exist_ok=True)
    missing = str(root / "missing.json")
    empty = write(root / "empty.json", "")
    older = write(root / "older.json", snapshot(version=3))
    same_version = write(root / "same.json", snapshot(version=5, issuedAt="2026-11-23T04:00:00Z"))
    bad_snap = write(root / "bad-snap.json", snapshot(version=6, cards=[{"number": 5}]))
    cases: list[tuple[str, list[str], str | None]] = []
    for cmd in (["quote"], ["checkout"], ["hold"], ["refund"], ["snapshot", "load"]):
        name = " ".join(cmd)
        cases += [
            (f"{name}: no file named", [*cmd], None),
            (f"{name}: a file that is not there", [*cmd, missing, "--json"], None),
            (f"{name}: a directory", [*cmd, str(folder), "--json"], None),
            (f"{name}: an empty file", [*cmd, empty, "--json"], None),
            (f"{name}: empty standard input", [*cmd, "-", "--json"], ""),
            (f"{name}: blanks on standard input", [*cmd, "-", "--json"], "  \n"),
            (f"{name}: an unknown option", [*cmd, empty, "--colour", "red"], None),
            (f"{name}: two files", [*cmd, empty, empty], None),
        ]
    cases += [
        ("snapshot: no action", ["snapshot"], None),
        ("snapshot load: older version", ["snapshot", "load", older], None),
        (
            "snapshot load: another under the cache's version",
            ["snapshot", "load", same_version],
            None,
        ),
        ("snapshot load: a card number a number", ["snapshot", "load", bad_snap], None),
        ("identify: no text", ["identify", "--json"], None),
        ("identify: text too long", ["identify", "1" * 129, "--json"], None),
        ("identify: an unknown option", ["identify", ANNA, "--at", AT], None),
        ("balance: no card", ["balance", "--json"], None),
        ("balance: bad check digit", ["balance", "2770000000018", "--json"], None),
        ("balance: letters", ["balance", "card-of-anna", "--json"], None),
        ("balance: --at not a time", ["balance", ANNA, "--at", "tomorrow", "--json"], None),
        ("balance: --at without offset", ["balance", ANNA, "--at", "2026-11-24T12:00:00"], None),
        ("balance: --at empty", ["balance", ANNA, "--at", "", "--json"], None),
        ("balance: --at without its value", ["balance", ANNA, "--at"], None),
        ("confirm: no receipt", ["confirm", "--json"], None),
        ("confirm: unknown receipt", ["confirm", "never-held", "--json"], None),
        ("confirm: --fiscal without its value", ["confirm", "h1", "--fiscal"], None),
        ("confirm: --fiscal too long", ["confirm", "h1", "--fiscal", "f" * 65, "--json"], None),
        ("confirm: --fiscal with a line break", ["confirm", "h1", "--fiscal", "a\nb"], None),
        ("cancel: no receipt", ["cancel", "--json"], None),
        ("cancel: unknown receipt", ["cancel", "never-held", "--json"], None),
        ("cancel: too long", ["cancel", "c" * 129, "--json"], None),
        ("cancel: an option it has not", ["cancel", "h1", "--fiscal", "F"], None),
        ("status: an extra word", ["status", "--json", "extra"], None),
        ("status: an unknown option", ["status", "--verbose"], None),
        ("an unknown command", ["refnud", "x.json"], None),
        ("an unknown top option", ["--colour", "red", "status"], None),
        ("--explain on checkout", ["checkout", empty, "--explain"], None),
    ]
    return cases


def assert_refused(result: Run, what: str, code: int = 2) -> None:
    assert result.code == code, (what, result)
    line = result.err.rstrip("\n")
    assert line.startswith("tillpoint: ") and "\n" not in line, (what, result.err)
    assert "Traceback" not in result.err and "Error:" not in line.split(":", 2)[1], (what, line)
    assert result.out == "", (what, result.out)


def test_s10_bad_input_at_every_command_is_exit_2_in_one_line_and_changes_nothing(
    seeded: Path, tmp_path: Path
) -> None:
    before = state(seeded)
    tried = 0
    for n, (what, body) in enumerate(receipt_cases()):
        path = write(tmp_path / "receipt.json", body)
        for cmd in ("quote", "checkout", "hold") if n % 3 == 0 else ("quote", "checkout"):
            assert_refused(run_cli(seeded, cmd, path, "--json"), f"{cmd}: {what}")
            tried += 1
        if n % 6 == 0:  # the text forms, on a few
            assert_refused(run_cli(seeded, "quote", path, "--explain"), f"explain: {what}")
    for n, (what, body) in enumerate(refund_cases()):
        path = write(tmp_path / "refund.json", body)
        assert_refused(run_cli(seeded, "refund", path, "--json"), f"refund: {what}")
        if n % 4 == 0:
            assert_refused(run_cli(seeded, "refund", path), f"refund (text): {what}")
        tried += 1
    for what, argv, stdin in other_cases(tmp_path):
        assert_refused(run_cli(seeded, *argv, stdin=stdin), what)
        tried += 1
    assert tried > 120
    assert state(seeded) == before


def test_s10_every_json_answer_is_one_document(tmp_path: Path) -> None:
    data = tmp_path / "data"
    snap = write(tmp_path / "snap.json", snapshot())
    steps: list[list[str]] = [
        ["snapshot", "load", snap, "--json"],
        ["snapshot", "load", snap, "--json"],  # the same again: "unchanged"
        ["identify", ANNA, "--json"],
        ["identify", "2770000000093", "--json"],  # a valid number nobody has
        ["identify", "", "--json"],
        ["quote", write(tmp_path / "q.json", sale("q1")), "--json"],
        ["quote", write(tmp_path / "q.json", sale("q1")), "--json", "--explain"],
        ["quote", write(tmp_path / "u.json", sale("u1", card="2770000000093")), "--json"],
        ["checkout", write(tmp_path / "r1.json", sale("r1")), "--json"],
        ["checkout", str(tmp_path / "r1.json"), "--json"],  # again: the stored result
        ["hold", write(tmp_path / "h1.json", sale("h1", redeemPoints=0)), "--json"],
        ["confirm", "h1", "--fiscal", "FD-1", "--json"],
        ["hold", write(tmp_path / "h2.json", sale("h2", redeemPoints=0)), "--json"],
        ["cancel", "h2", "--json"],
        ["refund", write(tmp_path / "f1.json", back("f1")), "--json"],
        ["refund", str(tmp_path / "f1.json"), "--json"],
        ["balance", ANNA, "--json"],
        ["balance", ANNA, "--at", LATER, "--json"],
        ["status", "--json"],
        ["--json", "status"],
    ]
    for argv in steps:
        result = run_cli(data, *argv)
        assert result.code == 0, (argv, result)
        assert result.err == "", (argv, result.err)
        assert result.out.endswith("\n") and result.out.count("\n") == 1, (argv, result.out)
        doc = json.loads(result.out)
        assert isinstance(doc, dict), (argv, doc)
    # An UNKNOWN card's sale carries "balance": null; its balance is a 404 (exit 2).
    unknown = run_cli(
        data,
        "checkout",
        write(tmp_path / "u2.json", sale("u2", card="2770000000093", redeemPoints=0)),
        "--json",
    )
    assert unknown.code == 0 and unknown.json()["balance"] is None
    refund = run_cli(
        data, "refund", write(tmp_path / "f2.json", back("f2", receiptId="u2")), "--json"
    )
    assert refund.code == 0 and refund.json()["balance"] is None, refund
    assert_refused(run_cli(data, "balance", "2770000000093", "--json"), "balance of UNKNOWN")


def proc(data_dir: Path, *argv: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "TILLPOINT_DEVICE_ID": "till-1", "TILLPOINT_CLI_LOCAL": "1"}
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("timeout", 120)
    return subprocess.run([EXE, "--data-dir", str(data_dir), *argv], env=env, **kw)


def test_s10_environment_faults_exit_1_and_bad_input_2_as_processes(
    seeded: Path, tmp_path: Path
) -> None:
    # Empty standard input through a real pipe is bad input: exit 2, one line.
    result = proc(seeded, "checkout", "-", "--json", input=b"")
    assert result.returncode == 2, result
    assert result.stderr.decode().count("\n") == 1 and b"Traceback" not in result.stderr
    assert result.stdout == b""
    # A stdout that takes nothing: what the command did stands, exit 1, one line.
    with open("/dev/full", "wb") as full:
        result = proc(seeded, "balance", ANNA, "--json", stdout=full, stderr=subprocess.PIPE)
    assert result.returncode == 1, result
    assert result.stderr.decode().startswith("tillpoint: the output could not be written")
    assert result.stderr.decode().count("\n") == 1
    # A damaged ledger (the till's own file, not input): exit 1, one line naming it.
    damaged = tmp_path / "damaged"
    shutil.copytree(seeded, damaged)
    for wal in damaged.glob("ledger.db-*"):
        wal.unlink()
    blob = bytearray((damaged / "ledger.db").read_bytes())
    blob[100:4096] = b"\xa5" * (4096 - 100)
    blob[8192:] = os.urandom(len(blob) - 8192)
    (damaged / "ledger.db").write_bytes(bytes(blob))
    result = proc(damaged, "refund", write(tmp_path / "f.json", back("f9")), "--json")
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert err.startswith("tillpoint: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "ledger" in err, err


# ---------------------------------------------------------------- §6: the split refund, modelled

MSK = "+03:00"
START = datetime.fromisoformat("2026-11-20T09:00:00+03:00")


def stamp(t: datetime) -> str:
    return t.isoformat()


@dataclass
class SoldLine:
    sku: str
    qty: Fraction
    redeemed: int  # p: points this line redeemed
    earned: int  # e: points this line earned
    returned: Fraction = Fraction(0)  # r: its qty returned over all refunds


@dataclass
class Sold:
    receipt_id: str
    card: str
    at: datetime
    activates: datetime
    lines: list[SoldLine]
    extra: int  # receipt-level EXTRA_POINTS
    earned: int  # e of the whole receipt (lines + extra)
    redeemed: int
    pending_taken: int = 0  # taken back off its own points while they were pending
    extra_taken: bool = False

    def whole_returned(self) -> bool:
        return all(line.returned == line.qty for line in self.lines)


@dataclass
class Customer:
    opening: int
    sales: list[Sold] = field(default_factory=list)
    returned: int = 0  # redeemed points given back
    taken_available: int = 0  # taken back off the available balance

    def balance_at(self, t: datetime) -> tuple[int, int]:
        available = self.opening + self.returned - self.taken_available
        pending = 0
        for sold in self.sales:
            available -= sold.redeemed
            own = sold.earned - sold.pending_taken
            if sold.activates <= t:
                available += own
            else:
                pending += own
        return available, pending


def qty_text(q: Fraction) -> str:
    text = f"{float(q):.3f}".rstrip("0").rstrip(".")
    assert Fraction(text) == q
    return text


def refund_model(
    sold: Sold, customer: Customer, lines: list[tuple[str, Fraction]], at: datetime
) -> tuple[int, int]:
    """What a refund gives back and takes back (contract §6), applied to the model."""
    given = taken = 0
    for sku, qty in lines:
        left = qty
        for line in sold.lines:
            if line.sku != sku or line.returned == line.qty or left == 0:
                continue
            step = min(left, line.qty - line.returned)
            before, after = line.returned, line.returned + step
            given += int(line.redeemed * after / line.qty) - int(line.redeemed * before / line.qty)
            taken += int(line.earned * after / line.qty) - int(line.earned * before / line.qty)
            line.returned = after
            left -= step
        assert left == 0
    if sold.whole_returned() and not sold.extra_taken:
        sold.extra_taken = True
        taken += sold.extra
    off_pending = 0
    if at < sold.activates:
        off_pending = min(taken, sold.earned - sold.pending_taken)
    sold.pending_taken += off_pending
    customer.returned += given
    customer.taken_available += taken - off_pending
    return given, taken


def story_snapshot(rng: random.Random) -> dict[str, Any]:
    snap = snapshot(version=1)
    program = snap["program"]
    program["pointValueMinor"] = rng.choice([100, 100, 50, 250])
    program["activationDelayDays"] = rng.choice([0, 0, 1, 2])
    program["maxRedeemPercent"] = rng.choice([30, 50, 99])
    program["offlineRedeemLimitPoints"] = 100000
    snap["customers"][1]["balancePoints"] = rng.choice([0, 0, 80, 400])
    snap["offers"] = [
        {
            "id": "xp-1",
            "campaignId": "camp-x",
            "kind": "EXTRA_POINTS",
            "skus": [],
            "categories": [],
            "value": str(rng.choice([10, 25, 60])),
            "minTotalMinor": 15000,
            "validFrom": "2026-11-01T00:00:00+03:00",
            "validTo": "2026-12-31T23:59:59+03:00",
            "priority": 1,
            "rank": 1,
            "printable": False,
        },
        {
            "id": "bm-1",
            "campaignId": "camp-m",
            "kind": "BONUS_MULTIPLIER",
            "skus": [CHEESE],
            "categories": [],
            "value": "3",
            "minQty": "1",
            "validFrom": "2026-11-01T00:00:00+03:00",
            "validTo": "2026-12-31T23:59:59+03:00",
            "priority": 1,
            "rank": 2,
            "printable": False,
        },
    ]
    return snap


def run_story(seed: int, root: Path) -> int:
    """One seeded story of sales and refunds through the CLI, every refund's figures and
    the balances after it compared with the model; returns the number of refunds."""
    rng = random.Random(seed)
    data = root / f"story-{seed}"
    snap = story_snapshot(rng)
    delay = timedelta(days=snap["program"]["activationDelayDays"])
    pv = snap["program"]["pointValueMinor"]
    loaded = run_cli(data, "snapshot", "load", write(root / "snap.json", snap))
    assert loaded.code == 0, loaded
    customers = {
        ANNA: Customer(snap["customers"][0]["balancePoints"]),
        BORIS: Customer(snap["customers"][1]["balancePoints"]),
        STRANGER: Customer(0),  # an UNKNOWN card: no balance known, nothing redeemed
    }
    t = START
    sales: list[Sold] = []
    refunds = 0
    seqs: list[int] = []  # §9: every sale and refund journalled under the next seq
    for step in range(rng.randint(5, 10)):
        t += timedelta(hours=rng.choice([1, 5, 13, 30]), minutes=rng.randint(1, 59))
        open_sales = [s for s in sales if not s.whole_returned()]
        if not open_sales or (len(sales) < 3 and rng.random() < 0.5):
            card = rng.choice([ANNA, BORIS, ANNA, BORIS, STRANGER])
            lines = []
            for _ in range(rng.randint(1, 4)):
                qty = rng.choice(
                    [Fraction(1), Fraction(2), Fraction(3), Fraction(512, 1000), Fraction(5, 4)]
                )
                lines.append(
                    {
                        "sku": rng.choice([MILK, BREAD, CHEESE, CIGS]),
                        "qty": qty_text(qty),
                        "priceMinor": rng.randint(900, 20000),
                    }
                )
            rid = f"s{seed}-{step}"
            body = {
                "receiptId": rid,
                "storeId": "s1",
                "tillId": "t1",
                "at": stamp(t),
                "card": card,
                "lines": lines,
                "redeemPoints": rng.choice([0, 40, 150, 900, 900]),
            }
            path = write(root / "sale.json", body)
            if rng.random() < 0.3:  # held, then confirmed: a refund sees the same sale
                held = run_cli(data, "hold", path, "--json")
                assert held.code == 0 and held.json()["state"] == "HELD", held
                result = run_cli(data, "confirm", rid, "--fiscal", f"FD-{rid}", "--json")
            else:
                result = run_cli(data, "checkout", path, "--json")
            assert result.code == 0, result
            doc = result.json()
            assert doc["deviceId"] == "till-1" and doc["seq"] == len(seqs) + 1, doc
            seqs.append(doc["seq"])
            sold_lines = []
            for sent, got in zip(lines, doc["lines"], strict=True):
                assert got["redeemedMinor"] % pv == 0
                sold_lines.append(
                    SoldLine(
                        sent["sku"],
                        Fraction(sent["qty"]),
                        got["redeemedMinor"] // pv,
                        got["earnedPoints"],
                    )
                )
            earned = doc["earnedPoints"]
            extra = earned - sum(line.earned for line in sold_lines)
            sold = Sold(rid, card, t, t + delay, sold_lines, extra, earned, doc["redeemedPoints"])
            assert sold.redeemed == sum(line.redeemed for line in sold_lines)
            customers[card].sales.append(sold)
            sales.append(sold)
            available, pending = customers[card].balance_at(t)
            if card == STRANGER:
                assert doc["balance"] is None and doc["redeemedPoints"] == 0, doc
                continue
            assert doc["balance"]["availablePoints"] == available, (
                seed,
                rid,
                doc["balance"],
                available,
            )
            assert doc["balance"]["pendingPoints"] == pending, (seed, rid, doc["balance"], pending)
            continue
        sold = open_sales[0] if rng.random() < 0.5 else rng.choice(open_sales)
        left: dict[str, Fraction] = {}
        for line in sold.lines:
            left[line.sku] = left.get(line.sku, Fraction(0)) + line.qty - line.returned
        returning: list[tuple[str, Fraction]] = []
        everything = rng.random() < 0.35
        for sku, rest in left.items():
            if rest == 0 or (not everything and rng.random() < 0.4):
                continue
            if everything:
                whole = rest
                while whole > 0:  # sometimes in two lines of one SKU
                    part = whole if rng.random() < 0.6 else min(whole, Fraction(1))
                    returning.append((sku, part))
                    whole -= part
            else:
                part = min(
                    rest, rng.choice([Fraction(1), Fraction(1, 2), Fraction(256, 1000), rest])
                )
                returning.append((sku, part))
        if not returning:
            continue
        refunds += 1
        customer = customers[sold.card]
        given, taken = refund_model(sold, customer, returning, t)
        rid = f"f{seed}-{step}"
        body = {
            "refundId": rid,
            "receiptId": sold.receipt_id,
            "at": stamp(t),
            "lines": [{"sku": s, "qty": qty_text(q)} for s, q in returning],
        }
        path = write(root / "refund.json", body)
        result = run_cli(data, "refund", path, "--json")
        assert result.code == 0, (seed, body, result)
        doc = result.json()
        assert doc["deviceId"] == "till-1" and doc["seq"] == len(seqs) + 1, doc
        seqs.append(doc["seq"])
        available, pending = customer.balance_at(t)
        if sold.card == STRANGER:  # no balance to tell, nor to go below zero
            available = pending = 0
        expected = {
            "refundId": rid,
            "receiptId": sold.receipt_id,
            "returnedPoints": given,
            "takenBackPoints": taken,
            "availablePoints": available,
            "pendingPoints": pending,
            "negativeBalance": available < 0,
        }
        got = {
            "refundId": doc["refundId"],
            "receiptId": doc["receiptId"],
            "returnedPoints": doc["returnedPoints"],
            "takenBackPoints": doc["takenBackPoints"],
            "availablePoints": (doc["balance"] or {"availablePoints": 0})["availablePoints"],
            "pendingPoints": (doc["balance"] or {"pendingPoints": 0})["pendingPoints"],
            "negativeBalance": doc["negativeBalance"],
        }
        assert (doc["balance"] is None) == (sold.card == STRANGER), doc
        assert got == expected, (seed, body, sold)
        # The same refund again: the stored result, nothing applied twice.
        before = state(data)
        again = run_cli(data, "refund", path, "--json")
        assert again.code == 0 and again.json() == doc, (seed, again)
        assert state(data) == before
    for card, customer in customers.items():
        if card == STRANGER:
            continue
        at = t + timedelta(days=5)
        result = run_cli(data, "balance", card, "--at", stamp(at), "--json")
        assert result.code == 0, result
        available, pending = customer.balance_at(at)
        bal = result.json()
        assert (bal["availablePoints"], bal["pendingPoints"]) == (available, pending), (
            seed,
            card,
            bal,
        )
    return refunds


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_s6_split_refunds_match_an_independent_model(seed: int, tmp_path: Path) -> None:
    assert run_story(seed, tmp_path) >= 0


@pytest.mark.slow
def test_s6_split_refunds_match_an_independent_model_more_seeds(tmp_path: Path) -> None:
    refunds = sum(run_story(seed, tmp_path) for seed in range(100, 160))
    assert refunds > 100


def test_s6_taking_back_spent_points_goes_below_zero_and_says_so(tmp_path: Path) -> None:
    """Boris (0 points) earns on s1, spends it all on s2, then returns s1 whole: the points
    taken back (its lines' and the receipt's EXTRA_POINTS) leave him below zero, and a
    partial return of s2 gives back floor(p × r / q) without lifting him above it."""
    snap = story_snapshot(random.Random(0))
    snap["program"].update(pointValueMinor=100, activationDelayDays=0, maxRedeemPercent=99)
    snap["customers"][1]["balancePoints"] = 0
    snap["offers"][0]["value"] = "25"
    data = tmp_path / "data"
    assert run_cli(data, "snapshot", "load", write(tmp_path / "s.json", snap)).code == 0
    s1 = {
        "receiptId": "s1",
        "storeId": "s1",
        "tillId": "t1",
        "at": "2026-11-20T10:00:00+03:00",
        "card": BORIS,
        "lines": [
            {"sku": CHEESE, "qty": "3", "priceMinor": 20000},
            {"sku": CIGS, "qty": "1", "priceMinor": 25000},
        ],
    }
    one = run_cli(data, "checkout", write(tmp_path / "s1.json", s1), "--json").json()
    assert one["lines"][0]["earnedPoints"] == 54 and one["earnedPoints"] == 54 + 25
    s2 = {
        **s1,
        "receiptId": "s2",
        "at": "2026-11-20T11:00:00+03:00",
        "lines": [{"sku": MILK, "qty": "3", "priceMinor": 10000}],
        "redeemPoints": 900,
    }
    two = run_cli(data, "checkout", write(tmp_path / "s2.json", s2), "--json").json()
    # 79 spent; 300.00 − 79.00 earns 6 (3 %), and the EXTRA_POINTS 25.
    assert two["redeemedPoints"] == 79 and two["lines"][0]["earnedPoints"] == 6
    earned2 = two["earnedPoints"]
    assert earned2 == 31 and two["balance"]["availablePoints"] == earned2
    # Cheese alone back first: its 54 points go, the EXTRA_POINTS stay (cigarettes kept).
    f1 = back(
        "f1", receiptId="s1", at="2026-11-20T12:00:00+03:00", lines=[{"sku": CHEESE, "qty": "3"}]
    )
    r1 = run_cli(data, "refund", write(tmp_path / "f1.json", f1), "--json").json()
    assert (r1["returnedPoints"], r1["takenBackPoints"]) == (0, 54)
    assert r1["balance"]["availablePoints"] == earned2 - 54 and r1["negativeBalance"] is True
    # The excluded line back too: the whole receipt is returned, the 25 go.
    f2 = back(
        "f2", receiptId="s1", at="2026-11-20T12:30:00+03:00", lines=[{"sku": CIGS, "qty": "1"}]
    )
    r2 = run_cli(data, "refund", write(tmp_path / "f2.json", f2), "--json").json()
    assert (r2["returnedPoints"], r2["takenBackPoints"]) == (0, 25)
    assert r2["balance"]["availablePoints"] == earned2 - 79 and r2["negativeBalance"] is True
    # One of s2's three back: floor(79 × 1 / 3) = 26 given back, floor(6 × 1 / 3) = 2 taken.
    f3 = back(
        "f3", receiptId="s2", at="2026-11-20T13:00:00+03:00", lines=[{"sku": MILK, "qty": "1"}]
    )
    r3 = run_cli(data, "refund", write(tmp_path / "f3.json", f3), "--json").json()
    assert (r3["returnedPoints"], r3["takenBackPoints"]) == (26, 2)
    after = earned2 - 79 + 26 - 2
    assert r3["balance"]["availablePoints"] == after and r3["negativeBalance"] is (after < 0)
    # The same refund id with another body is refused, nothing changed.
    before = state(data)
    other = back(
        "f3", receiptId="s2", at="2026-11-20T13:00:00+03:00", lines=[{"sku": MILK, "qty": "2"}]
    )
    assert_refused(
        run_cli(data, "refund", write(tmp_path / "f3b.json", other), "--json"), "f3 again"
    )
    # ... and the same body with its quantity spelt otherwise is the same refund.
    same = {**f3, "lines": [{"sku": MILK, "qty": "1.000"}]}
    again = run_cli(data, "refund", write(tmp_path / "f3c.json", same), "--json")
    assert again.code == 0 and again.json() == r3
    assert state(data) == before


# ---------------------------------------------------------------- §9: a real hub and `sync now`

CATALOGUE = Path(__file__).resolve().parents[1] / "examples" / "catalogue.json"


class Store:
    """A hub directory served by `tillpoint hub serve` and one enrolled till, driven
    through the command line only (as the README's "A till with a hub")."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hub = root / "hub"
        self.till = root / "till"
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
        self.env.update(TILLPOINT_DEVICE_ID="till-1", TILLPOINT_CLI_LOCAL="1")
        self.server: subprocess.Popen[bytes] | None = None
        self.must("hub", "init", "--hub-dir", str(self.hub))
        self.must("hub", "import", "--hub-dir", str(self.hub), str(CATALOGUE), "--publish")
        bundle = str(root / "till-1.json")
        address = f"127.0.0.1:{self.port}"
        self.must(
            "hub",
            "enroll",
            "--hub-dir",
            str(self.hub),
            "till-1",
            "--address",
            address,
            "--out",
            bundle,
        )
        self.must("--data-dir", str(self.till), "sync", "install", bundle)

    def run(self, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EXE, *argv], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def must(self, *argv: str) -> str:
        result = self.run(*argv)
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
        return result.stdout

    def at_till(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.run("--data-dir", str(self.till), *argv)

    def serve(self) -> None:
        log = open(self.root / "hub.log", "ab")  # noqa: SIM115 (kept open while it runs)
        self.server = subprocess.Popen(
            [EXE, "hub", "serve", "--hub-dir", str(self.hub), "--listen", f"127.0.0.1:{self.port}"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.server.poll() is None, (self.root / "hub.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("the hub did not listen within 60 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(sig)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(10)
        self.server = None

    def sync_now(self) -> subprocess.CompletedProcess[str]:
        return self.at_till("sync", "now", "--timeout", "90")

    def status(self) -> dict[str, Any]:
        result = self.at_till("status", "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def cache(self) -> bytes:
        return (self.till / "cache.db").read_bytes()

    def publish(self) -> None:
        self.must("hub", "publish", "--hub-dir", str(self.hub))


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    chain = Store(tmp_path)
    yield chain
    chain.stop()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tillpoint: "), result.stderr
    return lines[0]


def other_snapshot_key(hub: Path) -> None:
    """Replace the hub's snapshot signing key with a new one (another hub's key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (hub / "keys" / "snapshot.key").write_bytes(private)
    (hub / "keys" / "snapshot.pub").write_bytes(public)


def drop_built_snapshots(hub: Path) -> None:
    for path in (hub / "snapshots").glob("v*"):
        path.unlink()


@pytest.mark.slow
def test_s9_a_snapshot_signed_with_another_key_is_refused_then_taken_once_signed_right(
    store: Store,
) -> None:
    store.serve()
    assert store.sync_now().returncode == 0
    assert store.status()["cacheVersion"] == 1
    cache = store.cache()
    # The hub's signing key replaced (a hub rebuilt with new keys over its old store).
    store.stop()
    keys = {p.name: p.read_bytes() for p in (store.hub / "keys").glob("snapshot.*")}
    other_snapshot_key(store.hub)
    drop_built_snapshots(store.hub)
    store.publish()
    store.serve()
    refused = store.sync_now()
    line = one_error_line(refused)
    assert "signature" in line and "snapshot" in line, line
    assert "REFUSED" in refused.stdout
    assert store.cache() == cache
    status = store.status()
    assert status["cacheVersion"] == 1
    assert status["lastRefusedSnapshot"]["version"] == 2
    # The same again: refused from memory, the same one line.
    assert one_error_line(store.sync_now()) == line
    assert store.cache() == cache
    # The operator puts the hub's own key back: the same version, signed right, is taken
    # (its payload is the same bytes; its signature is not the one refused).
    store.stop()
    for name, blob in keys.items():
        (store.hub / "keys" / name).write_bytes(blob)
    drop_built_snapshots(store.hub)
    store.serve()
    taken = store.sync_now()
    assert taken.returncode == 0, (taken.stdout, taken.stderr)
    assert "snapshot 2 applied" in taken.stdout, taken.stdout
    status = store.status()
    assert status["cacheVersion"] == 2 and status["lastRefusedSnapshot"] is None


def built(hub: Path, pattern: str) -> tuple[Path, Path]:
    """The built snapshot file matching `pattern` and its header file beside it."""
    found = sorted((hub / "snapshots").glob(f"{pattern}.snap"))
    assert len(found) == 1, sorted(p.name for p in (hub / "snapshots").iterdir())
    return found[0], found[0].with_suffix(".json")


@pytest.mark.slow
def test_s9_a_truncated_snapshot_is_refused_and_the_cache_kept(store: Store) -> None:
    store.serve()
    assert store.sync_now().returncode == 0
    store.publish()
    before = store.root / "till-before-v2"
    shutil.copytree(store.till, before)  # the till as it was before it pulled version 2
    assert "snapshot 2 applied" in store.sync_now().stdout  # the hub built the delta
    store.stop()
    payload, header = built(store.hub, "v0000000002-from-*")
    whole = payload.read_bytes()
    shutil.rmtree(store.till)
    shutil.copytree(before, store.till)
    cache = store.cache()
    # (a) The payload cut short on the hub's disk, its header still saying the whole: the
    # hub's own check stops the stream; the till keeps its cache or gets the rebuilt file.
    payload.write_bytes(whole[: len(whole) // 2])
    store.serve()
    result = store.sync_now()
    status = store.status()
    if result.returncode == 0:
        assert "snapshot 2 applied" in result.stdout and status["cacheVersion"] == 2
    else:
        one_error_line(result)
        assert status["cacheVersion"] == 1 and store.cache() == cache
    store.stop()
    shutil.rmtree(store.till)
    shutil.copytree(before, store.till)
    # (b) The payload cut short and its header rewritten to match (size and SHA-256), the
    # signature left: the hub checks its files' signatures as it starts and builds that
    # one again, so the till gets the whole version 2.
    payload, header = built(store.hub, "v0000000002-from-*")
    cut = payload.read_bytes()[: len(whole) // 2]
    payload.write_bytes(cut)
    doc = json.loads(header.read_text())
    doc.update(size=len(cut), sha256=hashlib.sha256(cut).hexdigest())
    header.write_text(json.dumps(doc))
    store.serve()
    mended = store.sync_now()
    assert mended.returncode == 0 and "snapshot 2 applied" in mended.stdout, mended
    store.stop()
    shutil.rmtree(store.till)
    shutil.copytree(before, store.till)
    # (c) The hub's signed bundle (`hub export`) cut short on its way to the till, or its
    # signature altered: `snapshot load` refuses it (exit 2, one line), the cache kept.
    bundle = store.root / "v2.bundle"
    store.must("hub", "export", "--hub-dir", str(store.hub), "till-1", "--out", str(bundle))
    blob = bundle.read_bytes()
    for what, damaged in (
        ("truncated", blob[: len(blob) - 100]),
        ("half", blob[: len(blob) // 2]),
        ("signature", flip_signature(blob)),
    ):
        path = store.root / f"damaged-{what}.bundle"
        path.write_bytes(damaged)
        result = store.at_till("snapshot", "load", str(path))
        assert result.returncode == 2, (what, result)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tillpoint: "), (what, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
        assert store.cache() == cache, what
    assert store.status()["cacheVersion"] == 1
    quote = store.at_till("quote", str(CATALOGUE.with_name("receipt-card.json")), "--json")
    assert quote.returncode == 0, quote.stderr  # the till still prices on version 1
    loaded = store.at_till("snapshot", "load", str(bundle))
    assert loaded.returncode == 0, loaded.stderr
    assert store.status()["cacheVersion"] == 2


def flip_signature(blob: bytes) -> bytes:
    """The bundle with one bit of its signature changed (wherever the bundle keeps it)."""
    text = blob.decode("utf-8", "surrogateescape")
    at = text.find('"signature"')
    assert at >= 0, text[:300]
    start = text.index('"', text.index(":", at)) + 1
    sig = text[start : start + 8]
    swapped = sig[:4] + ("A" if sig[4] != "A" else "B") + sig[5:]
    return (text[:start] + swapped + text[start + 8 :]).encode("utf-8", "surrogateescape")


@pytest.mark.slow
def test_s9_a_hub_restored_to_an_older_version_is_not_followed_back(store: Store) -> None:
    backup = store.root / "hub-at-v1"
    shutil.copytree(store.hub, backup)  # the hub's backup, taken at version 1
    store.publish()
    store.serve()
    assert "snapshot 2 applied" in store.sync_now().stdout
    cache = store.cache()
    store.stop()
    shutil.rmtree(store.hub)
    shutil.copytree(backup, store.hub)  # restored from the backup: its newest is 1
    store.serve()
    result = store.sync_now()
    # Nothing older is taken: the push is done (exit 0), and one warning says why the
    # till stays ahead and what mends it (docs/PROTOCOL.md §4, "hub restored").
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.startswith("pushed 0 transaction(s), 0 waiting;"), result.stdout
    warning = result.stderr.splitlines()
    assert len(warning) == 1 and warning[0].startswith("tillpoint: warning: "), result.stderr
    assert "older" in warning[0] and "--min-version 3" in warning[0], warning
    assert store.cache() == cache and store.status()["cacheVersion"] == 2
    # The way out the line names: a version past the till's.
    store.must("hub", "publish", "--hub-dir", str(store.hub), "--min-version", "3")
    taken = store.sync_now()
    assert taken.returncode == 0 and "snapshot 3 applied" in taken.stdout, taken
    assert store.status()["cacheVersion"] == 3


@pytest.mark.slow
def test_s9_the_outbox_reaches_the_hub_exactly_once_across_a_hub_restart(store: Store) -> None:
    store.serve()
    assert store.sync_now().returncode == 0
    sale_doc = json.loads(CATALOGUE.with_name("receipt-card.json").read_text())

    def sell(receipt_id: str) -> dict[str, Any]:
        path = write(store.root / f"{receipt_id}.json", {**sale_doc, "receiptId": receipt_id})
        result = store.at_till("checkout", path, "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    sold = [sell(f"x-{n}") for n in range(3)]
    assert [s["seq"] for s in sold] == [1, 2, 3]
    unacked = store.root / "till-unacked"
    shutil.copytree(store.till, unacked)  # the till as it is before the hub's answer
    pushed = store.sync_now()
    assert pushed.returncode == 0 and pushed.stdout.startswith("pushed 3 transaction(s), 0 waiting")
    # The hub killed and started again; the till never heard its acknowledgement.
    store.stop(signal.SIGKILL)
    shutil.rmtree(store.till)
    shutil.copytree(unacked, store.till)
    assert store.status()["outboxDepth"] == 3
    store.serve()
    again = store.sync_now()
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert store.status()["outboxDepth"] == 0
    # Two more sold while the hub is away, pushed once it is back.
    store.stop(signal.SIGKILL)
    sold += [sell(f"x-{n}") for n in (3, 4)]
    assert [s["mode"] for s in sold[3:]] == ["OFFLINE", "OFFLINE"]
    store.serve()
    late = store.sync_now()
    assert late.returncode == 0 and late.stdout.startswith("pushed 2 transaction(s), 0 waiting")
    listed = store.must(
        "hub", "receipts", "--hub-dir", str(store.hub), "--device", "till-1", "--json"
    )
    rows = json.loads(listed)
    rows = rows.get("transactions", rows) if isinstance(rows, dict) else rows
    seqs = sorted(int(row["seq"]) for row in rows)
    assert seqs == [1, 2, 3, 4, 5], rows
    assert store.status()["outboxDepth"] == 0
    # The customer's points counted once each at the hub: what the till says.
    customer = sold[0]["card"]["customerId"]
    hub_balance = json.loads(
        store.must("hub", "balance", "--hub-dir", str(store.hub), customer, "--json")
    )
    till = store.at_till("balance", sale_doc["card"], "--json")
    assert hub_balance["availablePoints"] == json.loads(till.stdout)["availablePoints"]


def test_s9_a_refusal_for_the_signature_is_not_remembered_past_the_hubs_own_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The short twin of the slow hub test above, with the hub in this process: version 2
    signed with another key is refused (once at ERROR, marked as said by `sync now`'s own
    line), refused from memory at the next pull, and taken once the hub's own key signs
    the same payload again."""
    from tillpoint.sync.loopback import LoopbackHub, sample_master_data
    from tillpoint.sync.pull import Puller, cache_version

    from tests.conftest import enrolled_till

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    try:
        till = enrolled_till(hub, tmp_path / "till", "till-1")
        pull = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=5)
        hub.stop()
        keys = {p.name: p.read_bytes() for p in (hub.root / "keys").glob("snapshot.*")}
        other_snapshot_key(hub.root)
        drop_built_snapshots(hub.root)
        hub.restart()
        assert hub.publish() == 2
        with caplog.at_level("DEBUG", logger="tillpoint"):
            first = pull.pull()
        assert first.status == "REFUSED" and "signature" in first.message, first
        said = [r for r in caplog.records if "keeps its current version" in r.getMessage()]
        assert said and all(getattr(r, "said_by_the_command", False) for r in said)
        again = pull.pull()
        assert again.status == "REFUSED" and again.message == first.message
        assert cache_version(till.data_dir) == 1
        hub.stop()
        for name, blob in keys.items():
            (hub.root / "keys" / name).write_bytes(blob)
        drop_built_snapshots(hub.root)
        hub.restart()
        taken = pull.pull()
        assert taken.status == "APPLIED" and taken.version == 2, taken
        assert cache_version(till.data_dir) == 2
        till.stop()
    finally:
        hub.stop()


def load_through_fifo(data: Path, fifo: Path, payload: bytes, *argv: str) -> Run:
    """`snapshot load FIFO` in this process, a thread writing `payload` into the FIFO; a
    command that opened it again after the writer left is let go after 60 s (it blocked
    for ever before review 40)."""

    def feed() -> None:
        with open(fifo, "wb") as w:
            w.write(payload)

    def rescue() -> None:
        if not done.wait(60):
            with contextlib.suppress(OSError), open(fifo, "wb"):
                pass

    done = threading.Event()
    threads = [threading.Thread(target=f, daemon=True) for f in (feed, rescue)]
    for thread in threads:
        thread.start()
    try:
        return run_cli(data, "snapshot", "load", str(fifo), *argv)
    finally:
        done.set()
        with contextlib.suppress(OSError):  # a writer still waiting for its reader
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        for thread in threads:
            thread.join(10)


def test_s10_snapshot_load_reads_a_pipe_named_as_a_file_once(tmp_path: Path) -> None:
    """`snapshot load /dev/stdin` under a pipe, `<(zcat …)` and a named FIFO are files a
    script names as readily as `-`: each is read once, as `quote` reads one. Until review
    40 (spec40b) the loader read the first line to tell JSON Lines from one document and
    then opened the path again: a pipe was then empty ("not valid JSON (Expecting value at
    line 1 column 1)", exit 2, for a valid snapshot) and a FIFO whose writer had finished
    blocked the command for ever."""
    from tests.test_snapshot_stream import to_jsonl

    data = tmp_path / "data"
    document = json.dumps(snapshot(), ensure_ascii=False).encode()
    result = proc(data, "snapshot", "load", "/dev/stdin", "--json", input=document)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1
    fifo = tmp_path / "snap.fifo"
    os.mkfifo(fifo)
    for version, blob in (
        (2, to_jsonl(snapshot(version=2)).encode()),
        (3, json.dumps(snapshot(version=3), ensure_ascii=False).encode()),
    ):
        loaded = load_through_fifo(data, fifo, blob, "--json")
        assert loaded.code == 0, (version, loaded)
        assert loaded.json()["version"] == version
    # Bad input through a pipe is still bad input: one line, exit 2, the cache kept.
    before = state(data)
    for blob in (b"", b"{", b"\x00" * 8192, json.dumps(snapshot(version=1)).encode()):
        assert_refused(load_through_fifo(data, fifo, blob), repr(blob[:10]))
    assert state(data) == before
