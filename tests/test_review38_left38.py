"""Review 38, left38: older items the notes carried for several sessions, each tried with
real parts (the CLI in-process on a real data directory, real pseudo-terminals).

1. A barcode read twice in one scan (CONTRACT §4): the two copies of a card number in one
   text were an UNKNOWN card, whose sale accrued to a number no hub could ever settle.
2. A zero-width space between two words of a first name (CONTRACT §8, §7): the display and
   the printed receipt showed both words glued as one.
3. stdout under a locale that is not UTF-8 (CONTRACT §10): the contract's UTF-8 bytes
   (checked, found right; pinned).
5. A serial printer still taking a long coupon (CONTRACT §7, docs/PRINTING.md): its `GS r`
   was awaited from the write's return while the line still carried seconds of the job;
   the attempt was held, the coupon torn and sent again.
(4, pending points and §16: tests/scenarios/review38/; 6: docs/DECISIONS.md, review 38.)
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tillpoint.agent.identify import identify
from tillpoint.agent.models import CardRecord, Customer
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.decode import Decoder
from tillpoint.printer.layout import offers_blocks
from tillpoint.printer.messages import first_name_only, greeting
from tillpoint.printer.payload import PrintPayload

from .conftest import CLI, receipt, snapshot
from .test_review31_dev31 import till
from .test_review32_dev32 import _job_rows, _long_snapshot

CARD = "2770000000017"  # the base snapshot's card of customer c-a (Анна)
READ_TWICE = "the card was read twice in one scan; scan it once"


def _journal_rows(tmp_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "ledger.db")) as conn:
        row = conn.execute("SELECT count(*) FROM journal").fetchone()
    return int(row[0])


# ------------------------------------------------------------ 1. a card read twice (§4)


@pytest.mark.parametrize(
    "text",
    [
        CARD + CARD,
        f"{CARD}\r\n{CARD}\r\n",  # a keyboard wedge's Enter after each read
        f"{CARD}\t{CARD}",
        f"{CARD} {CARD}",
    ],
)
def test_a_card_read_twice_is_refused_with_a_reason_not_an_unknown_card(
    cli: CLI, tmp_path: Path, text: str
) -> None:
    """CONTRACT §4: a scanner that sends the number twice in one text made 26 digits, "any
    other string of digits": UNKNOWN, and the sale's points went to a card no hub knows (the
    customer's never reached them). Two copies of one valid card number are malformed input:
    INVALID with a reason the cashier acts on; a sale with it is refused, nothing stored."""
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("identify", text, "--json").json() == {"status": "INVALID", "reason": READ_TWICE}
    refused = cli("checkout", receipt("r-twice", card=text), "--json")
    assert refused.code == 2 and refused.out == ""
    assert refused.err.strip() == f"tillpoint: card not accepted: {READ_TWICE}"
    assert _journal_rows(tmp_path) == 0


def test_a_valid_number_not_in_the_cache_read_twice_is_refused_too(cli: CLI) -> None:
    """A card issued since the last snapshot, read twice: its two halves are a valid EAN-13
    each, so it is the same mistake (the single number is UNKNOWN, as §4 says)."""
    assert cli("snapshot", "load", snapshot()).code == 0
    new_card = "2770000000048"
    assert cli("identify", new_card, "--json").json() == {"status": "UNKNOWN"}
    assert cli("identify", new_card * 2, "--json").json() == {
        "status": "INVALID",
        "reason": READ_TWICE,
    }


def test_other_long_digit_strings_stay_unknown_as_the_contract_says(cli: CLI) -> None:
    """§4's letter for everything else: two different numbers, digits whose halves are not a
    card number, a card number in the cache whose text is two equal halves."""
    assert cli("snapshot", "load", snapshot()).code == 0
    for text in (CARD + "2770000000048", "1234567812345678", "123123"):
        assert cli("identify", text, "--json").json() == {"status": "UNKNOWN"}, text


def test_scanner_suffixes_and_separators_find_the_card_and_prefixes_are_invalid(cli: CLI) -> None:
    """A keyboard wedge's CR, LF, TAB, and GS1's FNC1 (sent as GS, 0x1D, white space to
    §4's "inner white space of any kind") around the number find the card; an AIM symbology
    prefix (`]E0`) is "other characters": INVALID, with the reason, never someone's card."""
    assert cli("snapshot", "load", snapshot()).code == 0
    for text in (f"{CARD}\r", f"{CARD}\n", f"{CARD}\t", f"\x1d{CARD}", f"{CARD}\x1d"):
        assert cli("identify", text, "--json").json()["status"] == "FOUND", repr(text)
    invalid = cli("identify", f"]E0{CARD}", "--json").json()
    assert invalid["status"] == "INVALID" and "digits only" in invalid["reason"]


class _ShortCard:
    """A cache with one five-digit card and no phone of anyone."""

    def card(self, number: str) -> CardRecord | None:
        if number == "12345":
            return CardRecord.model_validate({"number": "12345", "customerId": "c-9"})
        return None

    def customer(self, customer_id: str) -> Customer | None:
        return None

    def customer_by_phone(self, phone: str) -> Customer | None:
        return None

    def cards_of(self, customer_id: str) -> list[CardRecord]:
        return []


def test_a_short_card_read_twice_in_a_phones_form_is_refused_when_no_phone_matches() -> None:
    """ "12345" twice is a phone's form (ten digits): the phone comes first (§4's order, a
    customer's phone wins); when no one has it, it is the card read twice, not UNKNOWN."""
    found = identify("1234512345", _ShortCard())
    assert (found.status, found.reason) == ("INVALID", READ_TWICE)
    assert identify("12345", _ShortCard()).card_number == "12345"


# ------------------------------------------------- 2. zero-width characters in names (§8)


def test_a_zero_width_space_parts_the_first_name_on_the_display() -> None:
    """CONTRACT §8: never more than the first name. "Анна\\u200bМария" (two names a zero-width
    space parts, as a web form may keep them) was shown "АннаМария!", both names glued."""
    assert first_name_only("Анна\u200bМария") == "Анна"
    assert greeting("Анна\u200bМария") == ["Анна, добрый день!", ""]
    # joiners and the word joiner join: they are no break between words
    assert first_name_only("Анна\u2060Мария") == "АннаМария"
    # control characters never reach the display
    assert first_name_only("Иван\x07\x1b[2J") == "Иван[2J"


def test_a_zero_width_space_parts_the_first_name_on_the_printed_receipt() -> None:
    """CONTRACT §7/§8: the receipt's "Анна, ждём вас снова!" said "АннаМария, ..."."""

    payload = PrintPayload.model_validate({"receiptId": "r1", "firstName": "Анна\u200bМария\x1b"})
    blocks = offers_blocks(payload)
    greeting_text = getattr(blocks[1], "text", "")
    assert greeting_text == "Анна, ждём вас снова!"


# -------------------------------------- 3. stdout whose locale is not UTF-8 (CONTRACT §10)


@pytest.mark.slow  # five CLI processes, ~13 s
def test_the_cli_writes_the_contracts_utf8_bytes_whatever_the_locale(tmp_path: Path) -> None:
    """CONTRACT §10: `--json` prints one JSON document. Under LANG=C, with
    PYTHONIOENCODING=ascii or latin-1, into a pipe, the bytes are the UTF-8 run's: stdout
    is UTF-8 whatever the locale (strict: no text that is not UTF-8 reaches it, every
    input that could carry some is refused first), never "?" or an encoding error."""

    exe = Path(sys.executable).parent / "tillpoint"
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(snapshot()), encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONIO"))}
    base.update(TILLPOINT_DEVICE_ID="till-1", LANG="C.UTF-8")

    def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
        argv = [str(exe), "--data-dir", str(tmp_path / "data"), *args]
        return subprocess.run(argv, capture_output=True, env={**base, **env}, timeout=60)

    assert run({}, "snapshot", "load", str(snap)).returncode == 0
    utf8 = run({}, "identify", CARD, "--json")
    assert utf8.returncode == 0 and json.loads(utf8.stdout)["firstName"] == "Анна"
    for env in ({"LANG": "C", "LC_ALL": "C"}, {"PYTHONIOENCODING": "ascii"},
                {"PYTHONIOENCODING": "latin-1", "LANG": "C"}):  # fmt: skip
        other = run(env, "identify", CARD, "--json")
        assert (other.returncode, other.stdout, other.stderr) == (0, utf8.stdout, b""), env
    # a lone surrogate written as a JSON escape (a name no UTF-8 text has) never gets in
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(snapshot(version=2, customers=[{"id": "c-a", "firstName": "\udcff"}])),
        encoding="utf-8",
    )
    refused = run({"LANG": "C", "LC_ALL": "C"}, "snapshot", "load", str(bad))
    assert refused.returncode == 2 and refused.stdout == b""
    assert len(refused.stderr.decode().strip().splitlines()) == 1
    assert b"Traceback" not in refused.stderr


# ------------------------------------ 5. a serial printer that still takes a job (CONTRACT §7)


class _PacedLine:
    """The printer's end of a pseudo-terminal (`os.openpty`'s master) that takes the bytes
    at the line's pace, `rate` bytes a second (a 115,200-baud line, 11,520 bytes a second:
    what the kernel holds for the line drains no faster), decodes them as the printer
    does, and answers `GS r` (printed) and `DLE EOT` (on line, paper fine) once it has
    read them, in their order."""

    def __init__(self, master: int, rate: int) -> None:

        self.master = master
        self.rate = rate
        self.decoder = Decoder()
        self.answered_gs_r = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:

        start = time.monotonic()
        taken = 0
        while not self._stop.is_set():
            allowed = int((time.monotonic() - start) * self.rate) - taken
            if allowed <= 0:
                time.sleep(0.01)
                continue
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                # an idle line banks no time: the pace is the line's while it carries bytes
                start, taken = time.monotonic(), 0
                continue
            try:
                data = os.read(self.master, min(allowed, 4096))
            except OSError:
                return
            taken += len(data)
            for request in self.decoder.feed(data):
                answer = b"\x00" if request.command == "GS r" else b"\x12"
                self.answered_gs_r += request.command == "GS r"
                with contextlib.suppress(OSError):
                    os.write(self.master, answer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.slow  # a 50 KB coupon at 115,200 baud: ~8 s
def test_a_serial_printer_still_taking_a_long_coupon_is_not_held_nor_torn(
    tmp_path: Path,
) -> None:
    """CONTRACT §7, docs/PRINTING.md: a serial line carries a job at its baud rate, and
    the kernel holds tens of KB of it for the line after the agent's write has returned.
    The printer answers `GS r` once it has read the job; the answer was awaited
    `confirm_timeout_s` from the write's return, while the line still carried some 2 s of
    the coupon: the attempt was held as unacknowledged, the line's queue thrown away under
    the coupon's tail (a torn coupon on paper) and the job sent again later. The wait now
    runs from when the line has carried the job at its baud rate: one attempt, DONE, the
    coupon printed once, whole."""

    data = tmp_path / "data"

    seed = Agent(data, "till-1")
    seed.load_snapshot(_long_snapshot())
    seed.close()
    master, slave = os.openpty()
    line = _PacedLine(master, rate=11_520)
    config = PrinterConfig(
        kind="serial",
        device=os.ttyname(slave),
        baudrate=115_200,
        write_timeout_s=10.0,
        status_timeout_s=0.3,
        confirm_timeout_s=1.0,
        retry_base_s=0.05,
        retry_max_s=0.2,
        poll_interval_s=0.1,
    )
    try:
        with till(data, config) as (agent, _):
            sale = agent.checkout(receipt_from_json(receipt("r-000")))
            assert len(sale.printed_offers) == 50

            def settled() -> bool:
                rows = _job_rows(data)
                return bool(rows) and rows[0][1] in ("DONE", "FAILED", "HELD")

            deadline = time.monotonic() + 30
            while not settled() and time.monotonic() < deadline:
                time.sleep(0.05)
            rows = _job_rows(data)
        assert [(r, s, a) for r, s, a, _ in rows] == [("r-000", "DONE", 1)], rows
        docs = line.decoder.documents
        assert [d.complete for d in docs] == [True], [d.text[:60] for d in docs]
        assert docs[0].codes == [f"TP1-o-{n:02d}" for n in range(50)]
        assert line.answered_gs_r == 1
    finally:
        line.close()
        os.close(master)
        os.close(slave)
