"""Review 38, left38: older items the notes carried for several sessions, each tried with
real parts (the CLI in-process on a real data directory, real pseudo-terminals).

1. A barcode read twice in one scan (CONTRACT §4): the two copies of a card number in one
   text were an UNKNOWN card, whose sale accrued to a number no hub could ever settle.
2. A zero-width space between two words of a first name (CONTRACT §8, §7): the display and
   the printed receipt showed both words glued as one.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from tillpoint.agent.identify import identify
from tillpoint.agent.models import CardRecord, Customer
from tillpoint.printer.layout import offers_blocks
from tillpoint.printer.messages import first_name_only, greeting

from .conftest import CLI, receipt, snapshot

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
    """"12345" twice is a phone's form (ten digits): the phone comes first (§4's order, a
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
    from tillpoint.printer.payload import PrintPayload

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
    import json
    import os
    import subprocess
    import sys

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
