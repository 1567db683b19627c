"""Review 59 (mut59c): what the printer module is given and how it is configured, pinned
where mutation testing found no test.

`printer/payload.py` (the coupon job's payload: its limits, the words of an offer without
`printText`, the times turned into the store's zone), `printer/text.py` (control
characters out of an offer's text, CP866 and its look-alikes, wrapping and fitting, money
and decimals as printed) and `printer/config.py` (the `[printer]`, `[display]` and
`[scanner]` tables: hosts, devices, baud rates, code pages). Each test says what the
customer reads on the paper (python-escpos' own Dummy printer, read back with
`printer/decode.py`), what the till's configuration check answers (real TOML files read by
the `tillpoint` CLI in a subprocess, or the models the CLI builds), or what the bytes for
the printer hold; each fails on a mutant or a fault named in docs/DECISIONS.md, review 59
(mut59c).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError
from tillpoint.agent.errors import InputError
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.decode import decode
from tillpoint.printer.layout import offers_blocks, render_escpos
from tillpoint.printer.payload import (
    ANY_OFFER,
    PrintPayload,
    default_text,
    offer_text,
    parse_payload,
    payload_for_checkout,
    payload_source_for_checkout,
)
from tillpoint.printer.profiles import resolve_profile

MOSCOW = ZoneInfo("Europe/Moscow")
TILLPOINT = Path(sys.executable).with_name("tillpoint")


def paper(payload: str | dict[str, Any], **config: Any) -> list[str]:
    """The coupon of a payload as the printer of `config` prints it, line by line."""
    profile = resolve_profile(PrinterConfig(**config))
    data = render_escpos(offers_blocks(parse_payload(payload)), profile)
    [doc] = decode(data, columns=profile.columns)
    return doc.text.splitlines()


def snapshot_offer(**fields: Any) -> dict[str, Any]:
    return {"id": "o-1", "printText": "Кофе", **fields}


def run_tillpoint(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `tillpoint` command, as a support engineer runs it."""
    env = {**os.environ, "TILLPOINT_DEVICE_ID": "till-1", "TILLPOINT_CLI_LOCAL": "1"}
    return subprocess.run(
        [str(TILLPOINT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


# --- the payload: the store's zone ----------------------------------------------------


def test_a_time_written_with_a_lowercase_z_prints_in_the_stores_zone() -> None:
    """§2 takes RFC 3339's lowercase "z" (and "t"); `_local_text` read times with
    `datetime.fromisoformat`, which refuses them, and left such a time as written: the
    print worker then read it as UTC, "по 30.11.2026 22:00" for a Moscow store whose
    offer ends at 01:00 on 1 December, and the sale "07:15" for 10:15. The agent's own
    jobs are made from the times it parsed; `print preview --offers SNAPSHOT` gives the
    snapshot's text as written (the fault, fixed by reading the time in upper case)."""
    source = payload_source_for_checkout(
        "r1",
        "2026-11-23t07:15:00z",
        "Анна",
        [snapshot_offer(validFrom="2026-10-31t21:00:00z", validTo="2026-11-30T22:00:00z")],
        MOSCOW,
    )
    lines = paper(source)
    assert "Действует с 01.11 по 01.12.2026 01:00" in lines
    assert "Чек r1, 23.11.2026 10:15" in lines


def test_print_preview_shows_a_snapshots_lowercase_z_end_in_the_stores_zone(
    tmp_path: Path,
) -> None:
    """The fault above as the support engineer met it: the real CLI's preview of a
    snapshot whose offer ends "2026-11-30T21:30:00z" (00:30 on 1 December in Moscow)
    showed "по 30.11.2026 21:30", a day before the day the till honours it to."""
    result = {"receiptId": "r1", "at": "2026-11-23T07:15:00Z", "printedOffers": ["o-1"]}
    offers = {
        "program": {"timezone": "Europe/Moscow"},
        "offers": [snapshot_offer(validTo="2026-11-30T21:30:00z")],
    }
    (tmp_path / "result.json").write_text(json.dumps(result), encoding="utf-8")
    (tmp_path / "snapshot.json").write_text(json.dumps(offers), encoding="utf-8")
    run = run_tillpoint(
        "--data-dir", tmp_path / "data", "print", "preview", "result.json",
        "--offers", "snapshot.json", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = json.loads(run.stdout)["text"]
    assert "Действует по 01.12.2026 00:30" in text and "21:30" not in text
    assert "Чек r1, 23.11.2026 10:15" in text


def test_times_keep_their_offset_without_a_zone_and_move_with_one() -> None:
    """`_to_zone` runs only with a zone (`zone is not None` inverted in both builders), and
    moves `at`, `validFrom` and `validTo` each; what it cannot read stays as written."""
    offers = [snapshot_offer(validFrom="2026-10-31T21:00:00Z", validTo="2026-11-30T20:59:59Z")]
    for build in (payload_for_checkout, payload_source_for_checkout):
        kept = build("r1", "2026-11-23T07:15:00Z", None, offers)
        kept = json.loads(kept) if isinstance(kept, str) else kept
        assert kept["at"].startswith("2026-11-23T07:15:00")
        assert kept["offers"][0]["validTo"].startswith("2026-11-30T20:59:59")
        moved = build("r1", "2026-11-23T07:15:00Z", None, offers, MOSCOW)
        moved = json.loads(moved) if isinstance(moved, str) else moved
        assert moved["at"] == "2026-11-23T10:15:00+03:00"
        assert moved["offers"][0]["validFrom"] == "2026-11-01T00:00:00+03:00"
        assert moved["offers"][0]["validTo"] == "2026-11-30T23:59:59+03:00"
    # a bound left out stays out; no "at" when the sale gives none
    bare = json.loads(payload_source_for_checkout("r1", None, None, [snapshot_offer()], MOSCOW))
    assert "at" not in bare and "validFrom" not in bare["offers"][0]
    assert "validTo" not in bare["offers"][0] and "firstName" not in bare
    # no local time in the zone, no offset, not a time, not text: as written
    for value in ("9999-12-31T23:59:59Z", "2026-11-30T23:59:59", "soon", 20261130):
        data = json.loads(
            payload_source_for_checkout("r1", None, None, [snapshot_offer(validTo=value)], MOSCOW)
        )
        assert data["offers"][0]["validTo"] == value
    assert (
        paper(
            payload_source_for_checkout(
                "r1", None, None, [snapshot_offer(validTo="9999-12-31T23:59:59Z")], MOSCOW
            )
        )[4]
        == "Действует по 31.12.9999"
    )


def test_the_sale_without_a_time_prints_its_receipt_alone() -> None:
    lines = paper(payload_source_for_checkout("s1-t1-000123", None, "", [snapshot_offer()]))
    assert lines[1] == "Ждём вас снова!" and "Чек s1-t1-000123" in lines
    assert "Действует без ограничения срока" in lines


# --- the payload: its limits ----------------------------------------------------------


def test_an_offers_text_is_cut_at_1000_characters_and_a_first_name_at_100() -> None:
    """§7's decisions: a text to 1,000 characters, a first name to 100 (TEXT_MAX and
    FIRST_NAME_MAX ±1 survived: the cut and the check moved together)."""
    whole, over = "я" * 1000, "я" * 1001
    data = payload_for_checkout("r1", None, "А" * 101, [snapshot_offer(printText=over)])
    assert data["offers"][0]["text"] == whole and data["firstName"] == "А" * 100
    assert offer_text({"id": "o", "printText": whole}) == whole
    assert offer_text({"id": "o", "printText": over}) == whole
    parse_payload(
        {"receiptId": "r", "firstName": "А" * 100, "offers": [{"id": "o", "text": whole}]}
    )
    for bad, where in (
        ({"receiptId": "r", "offers": [{"id": "o", "text": over}]}, "offers.0.text"),
        ({"receiptId": "r", "firstName": "А" * 101}, "firstName"),
    ):
        with pytest.raises(InputError, match=f"^bad print job payload: {where}: "):
            parse_payload(bad)


def test_a_job_holds_50_offers_and_ids_of_1_to_200_characters() -> None:
    one = {"id": "o", "text": "x"}
    assert len(parse_payload({"receiptId": "r", "offers": [one] * 50}).offers) == 50
    with pytest.raises(InputError, match=r"^bad print job payload: offers: .*at most 50"):
        parse_payload({"receiptId": "r", "offers": [one] * 51})
    assert parse_payload({"receiptId": "r" * 200, "offers": [{**one, "id": "o" * 200}]})
    for bad, where in (
        ({"receiptId": "r" * 201}, "receiptId"),
        ({"receiptId": ""}, "receiptId"),
        ({"receiptId": "r", "offers": [{**one, "id": "o" * 201}]}, "offers.0.id"),
        ({"receiptId": "r", "offers": [{**one, "id": ""}]}, "offers.0.id"),
        ({"receiptId": "r", "offers": [{**one, "code": "T" * 2405}]}, "offers.0.code"),
    ):
        with pytest.raises(InputError, match=f"^bad print job payload: {where}: "):
            parse_payload(bad)
    # the longest code a 200-character id makes: TP1- and 200 × 4 UTF-8 bytes, %-encoded
    longest = payload_for_checkout("r", None, None, [{"id": "😀" * 200, "printText": "x"}])
    assert len(longest["offers"][0]["code"]) == 2404
    assert parse_payload({"receiptId": "r", "offers": [{**one, "code": "T" * 2404}]})


def test_a_code_is_printable_ascii_from_blank_to_tilde() -> None:
    """The code goes into the QR and CODE128 and onto the paper as text: printable ASCII,
    0x20 to 0x7E (the bounds ±1 and `<=` as `<` survived)."""
    one = {"id": "o", "text": "x"}
    for fine in (" TP1", "TP1~", "TP1-o-1", "7"):
        [offer] = parse_payload({"receiptId": "r", "offers": [{**one, "code": fine}]}).offers
        assert offer.scan_code == fine
    for bad in ("TP1\x1f", "TP1\x7f", "TP1\x1bd\x00", "ТП1"):
        with pytest.raises(InputError) as caught:
            parse_payload({"receiptId": "r", "offers": [{**one, "code": bad}]})
        assert str(caught.value) == (
            "bad print job payload: offers.0.code: Value error, code must be printable ASCII"
        )
    # absent or "": the offer's own code, on the paper and in the QR
    for absent in ({}, {"code": ""}, {"code": None}):
        payload = {"receiptId": "r", "offers": [{"id": "o-7", "text": "x", **absent}]}
        assert parse_payload(payload).offers[0].scan_code == "TP1-o-7"
        assert decode(
            render_escpos(offers_blocks(parse_payload(payload)), resolve_profile(PrinterConfig()))
        )[0].codes == ["TP1-o-7"]


def test_a_payload_is_refused_in_one_line_and_read_from_text_bytes_or_a_dict() -> None:
    text = '{"receiptId": "r", "offers": [{"id": "o", "text": "x", "validTo": ""}]}'
    for raw in (text, text.encode(), json.loads(text)):
        payload = parse_payload(raw)
        assert payload.receipt_id == "r" and payload.offers[0].valid_to is None
    with pytest.raises(InputError, match=r"^print job payload must be a JSON object$"):
        parse_payload("[1]")
    with pytest.raises(InputError, match=r"^print job payload is not JSON: "):
        parse_payload(b"{")
    with pytest.raises(InputError, match=r"^bad print job payload: receiptId: .*string$"):
        parse_payload({"receiptId": 5})
    # two faults: the first one named, in the fields' order (`errors()[0]`, not the last)
    with pytest.raises(InputError, match=r"^bad print job payload: receiptId: Field required$"):
        parse_payload({"offers": [{"id": "", "text": "x"}]})
    with pytest.raises(InputError, match=r"^bad print job payload: offers\.0\.validTo: "):
        parse_payload({"receiptId": "r", "offers": [{"id": "o", "text": "x", "validTo": "x"}]})
    # frozen: a job's payload is not changed on its way to the printer
    with pytest.raises(ValidationError):
        payload.receipt_id = "s"  # type: ignore[misc]


def test_the_stored_payload_is_written_by_alias_without_empty_fields() -> None:
    payload = PrintPayload.model_validate(
        {"receiptId": "r", "offers": [{"id": "o", "text": "x", "validTo": ""}]}
    )
    assert json.loads(payload.to_json()) == {
        "receiptId": "r",
        "offers": [{"id": "o", "text": "x"}],
    }
    source = payload_source_for_checkout("r", None, "Анна Петрова", [snapshot_offer()])
    assert source == (
        '{"receiptId": "r", "offers": [{"id": "o-1", "text": "Кофе", "code": "TP1-o-1"}],'
        ' "firstName": "Анна Петрова"}'
    )


# --- the payload: the words of an offer without printText ------------------------------


@pytest.mark.parametrize(
    ("offer", "words"),
    [
        ({"kind": "PERCENT_OFF", "value": "15.00"}, "Скидка 15% на товары акции"),
        ({"kind": "AMOUNT_OFF", "value": "1500"}, "Скидка 15,00 руб. за единицу товара акции"),
        (
            {"kind": "AMOUNT_OFF", "value": "150000.0"},
            "Скидка 1 500,00 руб. за единицу товара акции",
        ),
        ({"kind": "AMOUNT_OFF", "value": "1500.5"}, "Скидка на товары акции"),
        ({"kind": "AMOUNT_OFF", "value": "lots"}, "Скидка на товары акции"),
        ({"kind": "RECEIPT_PERCENT_OFF", "value": "7.5"}, "Скидка 7,5% на покупку"),
        ({"kind": "BONUS_MULTIPLIER", "value": "2"}, "Бонусы x2 на товары акции"),
        ({"kind": "EXTRA_POINTS", "value": "100"}, "+100 бонусов за покупку"),
        (
            {"kind": "MULTIBUY", "buyQty": "2", "freeQty": "1"},
            "2 + 1 в подарок на товары акции",
        ),
        ({"kind": "QUANTITY_PRICE", "value": "9900"}, "Особая цена на товары акции"),
        ({"kind": "SOMETHING_NEW", "value": "1"}, ANY_OFFER),
    ],
)
def test_an_offer_without_print_text_prints_what_it_gives(
    offer: dict[str, Any], words: str
) -> None:
    """§7's decisions, each kind's words (each `kind ==` inverted, each return as None)."""
    assert default_text(offer) == words
    for blank in ({}, {"printText": ""}, {"printText": " \t"}, {"printText": None}):
        assert offer_text({"id": "o", **offer, **blank}) == words
    lines = paper(payload_source_for_checkout("r", None, None, [{"id": "o", **offer}]))
    assert words in " ".join(lines)


def test_an_offers_own_words_win_and_no_kind_means_no_words_made() -> None:
    assert offer_text({"id": "o", "kind": "PERCENT_OFF", "value": "5", "printText": "Мои"}) == "Мои"
    # a payload offer's "text" before a snapshot offer's printText
    assert offer_text({"id": "o", "text": "Текст", "printText": "Другой"}) == "Текст"
    assert offer_text({"id": "o", "printText": " "}) == " "  # no kind: nothing to say
    assert offer_text({"id": "o"}) == "" and offer_text({"id": "o", "text": 5}) == ""


# --- the configuration: a printer's host ----------------------------------------------


def write_config(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "tillpoint.toml"
    path.write_text(table, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("host", "reached"),
    [
        ("192.168.001.050", "192.168.1.40"),  # leading zeros: octal to the C library
        ("192.168.1", "192.168.0.1"),  # an octet left out: the last number fills the rest
        ("10.1", "10.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("192.168.1.500", None),  # no such address: "not reachable" at every job
        ("3232235826", "192.168.1.50"),  # the address as one number
    ],
)
def test_a_host_that_only_looks_like_an_ip_address_is_refused(
    tmp_path: Path, host: str, reached: str | None
) -> None:
    """`_check_host` took anything its host-name pattern matched once `ipaddress` had
    refused it, and digits and dots match it: "192.168.001.050" passed `config check`
    and the C library's resolver reads it as 192.168.1.40 (octal), another device (or
    another till's printer) sent every coupon; "192.168.1" reached 192.168.0.1. No host
    name ends in a number (RFC 1123 §2.1), so such a host is refused, saying why."""
    import socket

    found = None
    with contextlib.suppress(OSError):
        found = socket.getaddrinfo(host, 9100, proto=socket.IPPROTO_TCP)[0][4][0]
    assert found == reached  # what the connection would have reached
    config = write_config(tmp_path, f'[printer]\nkind = "network"\nhost = "{host}"\n')
    run = run_tillpoint("--config", config, "config", "check", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run
    assert run.stderr.startswith("tillpoint: config [printer]: ")
    assert f"printer host '{host}' is not an IP address" in run.stderr
    assert "such as 192.168.1.50" in run.stderr


def test_host_names_and_addresses_a_printer_has_are_taken() -> None:
    for fine in (
        "192.168.1.50",
        "::1",
        "fe80::1%eth0",
        "prn-1",
        "printer1.shop.local",
        "prn.shop.example.",
        "1prn.local",
        "10.0.0.5.nip.io",
        "p",
        "x1",
    ):
        assert PrinterConfig(kind="network", host=fine).host == fine


# --- text: nothing but letters reaches the printer ------------------------------------


ESC, GS, DLE = "\x1b", "\x1d", "\x10"
SMUGGLED = (
    f"{ESC}p\x00\x19\xfa"  # ESC p: kick the cash drawer
    f"{GS}V\x00"  # GS V: cut
    f"{ESC}t\x00"  # ESC t: another code table
    f"{ESC}@{DLE}\x14\x01\x00\x01"  # init; DLE DC4: real-time drawer pulse
    "\x9b\x85\x7f"  # C1 CSI, NEL (a line break), DEL
    "\u200b\u00ad\u2060\ufeff\u034f\ufe0f\U000e0101\ue000\u0378"  # shows nothing / unassigned
)


def test_an_offer_text_from_the_hub_carries_no_printer_command() -> None:
    """Only the letters of an offer's text reach the printer: every control character
    (C0, C1, DEL), format character, private-use, unassigned or ignorable code point is
    removed before the text is encoded, so a text cannot kick the drawer, cut, or switch
    the code table (each of `clean`'s conditions inverted or made `and`)."""
    text = f"Скидка{SMUGGLED}-15%\tна\nмолоко"
    payload = {"receiptId": "r1", "offers": [{"id": "o-1", "text": text, "code": "TP1-o-1"}]}
    profile = resolve_profile(PrinterConfig())
    data = render_escpos(offers_blocks(parse_payload(payload)), profile)
    # the commands' letters are letters ("p", "V", "t", "@", "ú" as "u"); GS, FS, RS and
    # NEL part paragraphs (`str.splitlines`), the tab is a blank
    assert paper(payload)[3:7] == ["Скидкаpu", "Vt@", "-15% на", "молоко"]
    for command in (b"\x1bp", b"\x1bt\x00", b"\x10\x14", b"\x7f"):  # 0x85, 0x9b: "Е", "Ы"
        assert command not in data
    assert data.count(b"\x1dV") == 1 and data.endswith(b"\x1dV\x01")  # the job's own cut, last
    assert data.count(b"\x1b@") == 1 and data.startswith(b"\x1b@\x1bt\x11")


def test_clean_makes_every_break_a_blank_and_drops_what_shows_nothing() -> None:
    from tillpoint.printer.text import clean

    breaks = "\t\n\r\v\f\u2028\u2029\x85"
    assert clean("a" + "b".join(breaks) + "z") == "a" + "b".join(" " * len(breaks)) + "z"
    assert clean(f"a{SMUGGLED}z") == "apúVt@ z"  # the commands' letters stay, NEL a blank
    assert clean("e\u0301") == "é"  # NFC: one letter, encodable where the page has it
    # the variation selectors, both ranges to their ends, and nothing beside them
    selectors = "\ufe00\ufe0f\U000e0100\U000e01ef"
    assert clean(f"a{selectors}b") == "ab"
    assert clean("\ufdff\ufe10") == "\ufdff\ufe10"  # a ligature, a vertical comma
    assert clean("\U000e00ff\U000e01f0") == ""  # unassigned
    assert clean("Анна Мария") == "Анна Мария"


# --- text: CP866 keeps its letters, and what it lacks is written readably ---------------


def test_every_character_cp866_has_is_printed_as_itself() -> None:
    """'?' only where the page lacks the character: each printable character of CP866
    is encoded as its own byte (`_can`'s answer as None, `_degrade_char`'s first test)."""
    from tillpoint.printer.text import degrade, encode

    page = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
    letters = page.decode("cp866").replace("\xa0", "")  # a no-break space prints as a blank
    assert degrade(letters, "cp866") == letters
    assert encode(letters, "cp866") == letters.encode("cp866")


@pytest.mark.parametrize(
    ("text", "codec", "printed"),
    [
        ("«Скидка» — 15 ₽… №", "cp866", '"Скидка" - 15 Р... №'),
        ("×2 • Ґанок і Її Єє Ўў", "cp866", "x2 * Ганок i Її Єє Ўў"),
        ("Әсел Қанат Ұлан Һ Ө", "cp866", "Асел Канат Улан Х О"),
        ("Ґ ґ Ї ї Є є Ў ў ₽", "ascii", "G g I i E e U u R"),
        ("Жук ЖУК Щи ЩИ Я ЯБЛОКИ Ёлка", "ascii", "Zhuk ZHUK Shchi SHCHI Ia IABLOKI Elka"),
        ("Я́БЛОКИ моло́ко café", "cp866", "ЯБЛОКИ молоко cafe"),
        ("Я́БЛОКИ Ж́УК", "ascii", "IABLOKI ZHUK"),
        ("ﬁ Ａ ² ☺", "cp866", "fi A 2 ?"),
        ("ǅ ǆ", "cp866", "Dz dz"),  # NFKD "Dž": the letters the page has, the caron dropped
        ("ЪЬ ъь", "ascii", " "),
    ],
)
def test_what_the_page_lacks_is_written_with_what_it_has(
    text: str, codec: str, printed: str
) -> None:
    from tillpoint.printer.text import degrade, encode

    assert degrade(text, codec) == printed
    assert encode(text, codec) == printed.encode(codec)


def test_a_capital_stays_capital_only_in_a_word_in_capitals() -> None:
    """`_in_capitals`: the letter after, or at a word's end the letter before; the marks
    between looked past, on either side."""
    from tillpoint.printer.text import degrade

    cases = {
        "ЯБ": "IAB",
        "БЯ": "BIA",
        "бЯ": "bIa",
        "Яб": "Iab",
        "Я": "Ia",
        "Я1": "Ia1",
        "1Я": "1Ia",
        "Я-Б": "Ia-B",
        "Б-Я": "B-Ia",
        "Я\u0301Б": "IAB",
        "Б\u0301Я": "BIA",
        "Б\u0301\u0301Я\u0301": "BIA",
        "б\u0301Я": "bIa",
        "Я\u0301": "Ia",
        "\u0301Я": "Ia",
        "ЩЯ": "SHCHIA",
        "Щя": "Shchia",
    }
    for text, printed in cases.items():
        assert degrade(text, "ascii") == printed, text


# --- text: wrapping and fitting -------------------------------------------------------


def test_wrap_breaks_at_blanks_and_hyphens_and_never_passes_the_width() -> None:
    from tillpoint.printer.text import wrap

    assert wrap("Скидка-20% на молоко", 12) == ["Скидка-20%", "на молоко"]
    assert wrap("Скидка-20%-на-всё", 10) == ["Скидка-", "20%-на-всё"]
    assert wrap("ультрапастеризованное", 10) == ["ультрапаст", "еризованно", "е"]
    assert wrap("а   б  ", 10) == ["а   б"]
    assert wrap("", 10) == [""] and wrap("   ", 10) == [""]
    long = "Скидка 15% на молоко ультрапастеризованное 3,2% «Домик в деревне» " * 5
    for width in (16, 20, 32, 48):
        assert all(len(line) <= width for line in wrap(long, width))


def test_a_coupon_line_never_passes_the_paper_even_once_degraded() -> None:
    """The text is degraded before it is wrapped: "…" takes three columns, "Щ" four on a
    page without Cyrillic, so wrapping first would have passed the paper's width."""
    text = "Щ…" * 40
    payload = {"receiptId": "r1", "offers": [{"id": "o-1", "text": text, "code": "TP1-o-1"}]}
    for config in ({}, {"profile": "generic-58mm", "codepage": "ascii", "codepage_table": 0}):
        lines = paper(payload, **config)
        columns = resolve_profile(PrinterConfig(**config)).columns
        assert max(map(len, lines)) == columns


@pytest.mark.parametrize(
    ("text", "width", "fitted"),
    [
        ("Молоко", 6, "Молоко"),
        ("  Молоко   кефир ", 12, "Молоко кефир"),
        ("Молоко кефир", 11, "Молоко."),
        ("Молоко кефир", 7, "Молоко."),
        ("Молоко кефир", 6, "Молок."),
        ("Abc de fgh", 7, "Abc de."),  # the row ends at a blank: its words kept whole
        ("Молоко и кефирчик", 12, "Молоко и."),  # one word back, not two
        ("Молоко, кефир и сметана", 12, "Молоко."),
        ("Молоко ультрапастеризованное", 20, "Молоко ультрапастер."),
        ("Мо кефирсметана", 10, "Мо кефирс."),
        ("Молок кефирсметана", 10, "Молок."),
        ("Молоко -- кефир", 10, "Молоко."),
        ("Ab cdefgh", 4, "Ab."),
        ("Ab cdefgh", 5, "Ab."),
        ("Abc defgh", 6, "Abc."),
        ("Молоко", 2, "М."),
        ("Молоко", 1, "М"),
        ("Молоко", 0, ""),
    ],
)
def test_fit_cuts_at_a_word_when_half_the_row_is_kept_and_ends_in_a_dot(
    text: str, width: int, fitted: str
) -> None:
    """`fit`: what fits stays whole; else cut at the last word within the row when that
    keeps at least half of it (`width // 2`), mid-word otherwise, with the punctuation at
    the cut dropped and "." added; never more than `width` characters."""
    from tillpoint.printer.text import fit

    assert fit(text, width) == fitted
    assert len(fit(text, width)) <= max(width, 0)


# --- money and figures as printed -----------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "printed"),
    [
        (0, "0,00"),
        (5, "0,05"),
        (50, "0,50"),
        (100, "1,00"),
        (1500, "15,00"),
        (99999, "999,99"),
        (100000, "1 000,00"),
        (123456789, "1 234 567,89"),
        (-1, "-0,01"),
        (-150, "-1,50"),
        (-123456789, "-1 234 567,89"),
    ],
)
def test_money_is_roubles_and_kopecks_with_thousands_apart(minor: int, printed: str) -> None:
    from tillpoint.printer.text import format_money

    assert format_money(minor) == printed


def test_money_is_never_a_float_nor_a_truth_value() -> None:
    from tillpoint.printer.text import format_money

    for bad in (True, False, 15.0, "1500", None):
        with pytest.raises(TypeError, match=r"^money is an integer number of minor units$"):
            format_money(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        ("15", "15"),
        ("15.00", "15"),
        ("1.50", "1,5"),
        ("7.5", "7,5"),
        ("100", "100"),
        ("10", "10"),
        ("1E+2", "100"),
        ("1E-7", "0,0000001"),
        ("0.0", "0"),
        (2, "2"),
        ("NaN", "NaN"),
        ("1,5", "1,5"),
    ],
)
def test_a_decimal_is_written_as_a_person_writes_it(value: object, printed: str) -> None:
    from tillpoint.printer.text import format_decimal

    assert format_decimal(value) == printed


# --- the configuration: bounds, defaults, devices, code pages -------------------------


def refused(model: type[Any], **fields: Any) -> str:
    """The one-line reason a table is refused for (the first of pydantic's errors)."""
    with pytest.raises(ValidationError) as caught:
        model(**fields)
    first = caught.value.errors()[0]
    return ".".join(map(str, first["loc"])) + ": " + str(first["msg"])


BOUNDS = [
    # (model, field, lowest taken, highest taken, what else the table needs)
    ("printer", "port", 1, 65535, {}),
    ("printer", "baudrate", 300, 921600, {}),
    ("printer", "usb_vendor_id", 0, 0xFFFF, {}),
    ("printer", "usb_product_id", 0, 0xFFFF, {}),
    ("printer", "usb_in_ep", 0, 0xFF, {}),
    ("printer", "usb_out_ep", 0, 0xFF, {}),
    ("printer", "columns", 16, 96, {}),
    ("printer", "width_px", 128, 2048, {}),
    ("printer", "codepage_table", 0, 255, {}),
    ("printer", "qr_module_px", 1, 16, {}),
    ("printer", "max_send_failures", 1, 1000, {}),
    ("printer", "probe_interval_s", 0, 3600, {}),
    ("printer", "connect_timeout_s", 0.001, 3600, {}),
    ("display", "baudrate", 300, 921600, {}),
    ("display", "columns", 8, 40, {}),
    ("display", "rows", 1, 4, {}),
    ("display", "codepage_table", 0, 255, {}),
    ("display", "brightness", 1, 4, {}),
    ("display", "refresh_s", 0.001, 3600, {}),
    ("scanner", "baudrate", 300, 921600, {}),
    ("scanner", "max_length", 8, 4096, {}),
    ("scanner", "read_timeout_s", 0.001, 3600, {}),
]


def _model(name: str) -> type[Any]:
    from tillpoint.printer.config import DisplayConfig, ScannerConfig

    return {"printer": PrinterConfig, "display": DisplayConfig, "scanner": ScannerConfig}[name]


@pytest.mark.parametrize(("table", "field", "low", "high", "extra"), BOUNDS)
def test_table_numbers_are_taken_at_their_bounds_and_refused_past_them(
    table: str, field: str, low: float, high: float, extra: dict[str, Any]
) -> None:
    """A baud rate of 0, a port of 0 or 65536, a display of 0 rows, a code table slot of
    256 (no ESC t byte): refused at the check, not found out at the first sale; the
    bounds themselves taken (each bound ±1 survived)."""
    model = _model(table)
    for fine in (low, high):
        assert getattr(model(**extra, **{field: fine}), field) == fine
    step = 1 if isinstance(low, int) else low
    below = 0 if isinstance(low, float) else low - step
    for bad in (below, high + 1):
        assert refused(model, **extra, **{field: bad}).startswith(f"{field}: ")


def test_table_numbers_a_heading_is_one_row_of_the_widest_paper() -> None:
    assert PrinterConfig(heading="Ш" * 96).heading == "Ш" * 96
    assert refused(PrinterConfig, heading="Ш" * 97).startswith("heading: ")
    from tillpoint.printer.config import DisplayConfig

    assert refused(DisplayConfig, cd5220_charset="").startswith("cd5220_charset: ")
    assert refused(DisplayConfig, cd5220_charset="RU").startswith("cd5220_charset: ")


def test_table_numbers_default_to_what_the_printing_guide_says() -> None:
    """docs/PRINTING.md's tables, as the till runs with nothing set (each default ±1 and
    the models' flags survived: frozen, unknown keys refused, blanks stripped)."""
    from tillpoint.printer.config import DisplayConfig, ScannerConfig

    printer = PrinterConfig()
    assert (printer.kind, printer.port, printer.baudrate, printer.stopbits) == (
        "none",
        9100,
        9600,
        1,
    )
    assert (printer.usb_in_ep, printer.usb_out_ep, printer.qr_module_px) == (0x82, 0x01, 6)
    assert (printer.max_send_failures, printer.probe_interval_s) == (5, 60.0)
    assert (printer.codepage, printer.codepage_table, printer.columns) == ("cp866", None, None)
    assert (printer.query_status, printer.confirm) == (True, True)  # DLE EOT and GS r asked
    display = DisplayConfig()
    assert (display.columns, display.rows, display.codepage_table) == (20, 2, 17)
    assert (display.brightness, display.baudrate, display.cd5220_charset) == (4, 9600, "R")
    assert display.stopbits == 1
    scanner = ScannerConfig()
    assert (scanner.max_length, scanner.baudrate, scanner.encoding) == (128, 9600, "utf-8")
    assert refused(PrinterConfig, prot=9100).startswith("prot: Extra inputs")
    assert PrinterConfig(kind="network", host="  192.168.1.50 ").host == "192.168.1.50"
    with pytest.raises(ValidationError):
        printer.port = 9101  # type: ignore[misc]


def test_usb_ids_are_read_in_hex_or_decimal_and_stop_bits_from_text(tmp_path: Path) -> None:
    """A real file and the environment, read by `tillpoint config check`: "0x04b8" and
    " 0X0E15 " as numbers (`_parse_int`), the environment's "2" as two stop bits."""
    config = write_config(
        tmp_path,
        '[printer]\nkind = "usb"\nusb_vendor_id = "0x04b8"\nusb_product_id = " 0X0E15 "\n'
        '[display]\nkind = "serial"\ndevice = "loop://"\n',
    )
    os.environ["TILLPOINT_DISPLAY__STOPBITS"] = " 2 "
    try:
        run = run_tillpoint("--config", config, "config", "check", cwd=tmp_path)
    finally:
        del os.environ["TILLPOINT_DISPLAY__STOPBITS"]
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout[run.stdout.index("{") :])
    assert (shown["printer"]["usb_vendor_id"], shown["printer"]["usb_product_id"]) == (1208, 3605)
    assert shown["display"]["stopbits"] == 2 and shown["printer"]["stopbits"] == 1
    assert PrinterConfig(usb_vendor_id="1208").usb_vendor_id == 1208
    assert PrinterConfig(usb_vendor_id=5).usb_vendor_id == 5
    # a text that is no number is refused as such, not as no value at all
    assert "unable to parse string as an integer" in refused(PrinterConfig, usb_vendor_id="0xZZ")
    assert PrinterConfig(stopbits=2).stopbits == 2  # a number from TOML as it is
    assert refused(PrinterConfig, usb_vendor_id="0x10000").startswith("usb_vendor_id: ")
    assert refused(PrinterConfig, stopbits="3").startswith("stopbits: ")
    assert refused(PrinterConfig, stopbits=" 1.5 ").startswith("stopbits: ")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"kind": "network"}, 'printer kind "network" needs host'),
        ({"kind": "network", "host": ""}, 'printer kind "network" needs host'),
        ({"kind": "network", "host": "prn 1"}, "is not a host name or an IP address"),
        ({"kind": "file"}, 'printer kind "file" needs device'),
        ({"kind": "serial"}, 'printer kind "serial" needs device'),
        ({"kind": "serial", "device": ""}, 'printer kind "serial" needs device'),
        ({"kind": "usb"}, 'printer kind "usb" needs usb_vendor_id and usb_product_id'),
        ({"kind": "usb", "usb_vendor_id": 1}, "needs usb_vendor_id and usb_product_id"),
        ({"kind": "usb", "usb_product_id": 1}, "needs usb_vendor_id and usb_product_id"),
        ({"kind": "file", "device": "/dev/usb/lp0\x00"}, "must not contain a NUL character"),
        ({"kind": "none", "device": "a\x00"}, "must not contain a NUL character"),
        ({"retry_base_s": 2.0, "retry_max_s": 1.9}, "retry_max_s must not be below retry_base_s"),
        ({"codepage": "utf-8"}, "is not a single-byte ASCII-compatible code page"),
        ({"codepage": "cp932"}, "is not a single-byte ASCII-compatible code page"),
        ({"codepage": "cp500"}, "is not a single-byte ASCII-compatible code page"),
        ({"codepage": "rot13"}, "is not a single-byte ASCII-compatible code page"),
        ({"codepage": "cp_866"}, "unknown code page 'cp_866'"),
    ],
)
def test_a_printer_table_that_cannot_work_is_refused_saying_why(
    fields: dict[str, Any], says: str
) -> None:
    assert says in refused(PrinterConfig, **fields)


def test_a_printer_table_that_works_is_taken() -> None:
    for fields in (
        {"kind": "network", "host": "prn-1"},
        {"kind": "file", "device": "/dev/usb/lp0"},
        {"kind": "serial", "device": "loop://"},
        {"kind": "serial", "device": "/dev/ttyS0"},
        {"kind": "usb", "usb_vendor_id": 0, "usb_product_id": 0},
        {"kind": "none"},
        {"kind": "none", "device": "/dev/ttyS0"},
        {"retry_base_s": 2.0, "retry_max_s": 2.0},
        {"codepage": "CP866"},
        {"codepage": "ibm866"},
        {"codepage": "cp1251", "codepage_table": 46},
        {"codepage": "kz1048"},
        {"codepage": "ascii"},
    ):
        PrinterConfig(**fields)  # type: ignore[arg-type]


def test_a_code_page_is_named_canonically_or_refused() -> None:
    from tillpoint.printer.config import check_single_byte_codec

    for name, canonical in (("CP866", "cp866"), ("866", "cp866"), ("windows-1251", "cp1251")):
        assert check_single_byte_codec(name) == canonical
    for name in ("utf-16", "shift_jis", "big5", "euc_kr", "cp037", "hex", "undefined", "idna"):
        with pytest.raises(ValueError, match="is not a single-byte ASCII-compatible code page"):
            check_single_byte_codec(name)
    with pytest.raises(ValueError, match=r"^unknown code page 'nope' \(use a Python codec"):
        check_single_byte_codec("nope")


@pytest.mark.parametrize("table", ["printer", "display", "scanner"])
@pytest.mark.parametrize(
    ("device", "fine"),
    [
        ("socket://127.0.0.1:1", True),
        ("socket://127.0.0.1:65535", True),
        ("SOCKET://prn:9100", True),
        ("rfc2217://till:7000?timeout=1", True),
        ("socket://127.0.0.1:0", False),
        ("socket://127.0.0.1:65536", False),
        ("Socket://127.0.0.1", False),
        ("rfc2217://:7000", False),
        ("socket://[::1:9100", False),
        ("loop://", True),
        ("spy://127.0.0.1:0", True),  # not a network URL: pyserial's own
        ("/dev/ttyUSB0", True),
    ],
)
def test_a_serial_url_names_a_host_and_a_port_1_to_65535(
    table: str, device: str, fine: bool
) -> None:
    model = _model(table)
    if fine:
        assert model(kind="serial", device=device).device == device
    else:
        says = refused(model, kind="serial", device=device)
        assert f"{table} device {device!r}: expected " in says and "with a port 1-65535" in says


@pytest.mark.parametrize("table", ["display", "scanner"])
def test_a_serial_display_or_scanner_needs_its_device_and_no_nul(table: str) -> None:
    model = _model(table)
    assert f'{table} kind "serial" needs device' in refused(model, kind="serial")
    assert "must not contain a NUL character" in refused(model, kind="none", device="\x00")
    assert model(kind="none").device is None and model().kind == "none"


def test_a_display_and_a_scanner_refuse_what_cannot_work() -> None:
    from tillpoint.printer.config import DisplayConfig, ScannerConfig

    assert "cd5220_charset must be one ASCII letter" in refused(DisplayConfig, cd5220_charset="Р")
    assert "is not a single-byte" in refused(DisplayConfig, codepage="utf-8")
    assert "unknown scanner encoding 'utf-9'" in refused(ScannerConfig, encoding="utf-9")
    assert ScannerConfig(encoding="latin-1").encoding == "latin-1"


@pytest.mark.parametrize("encoding", ["hex", "rot13", "base64", "undefined", "idna"])
def test_a_scanner_encoding_that_cannot_decode_a_scan_is_refused(
    tmp_path: Path, encoding: str
) -> None:
    """`[scanner] encoding` was checked with `codecs.lookup` alone, which knows "hex",
    "rot13", "base64" (bytes-to-bytes codecs), "undefined" (fails every call) and "idna"
    (no "replace"): `config check` said "valid", and the kiosk's first scan raised inside
    the reader thread (`bytes.decode`, outside its guarded read), which died: no scan was
    delivered again while `status` said "OK". Refused at the check now."""
    config = write_config(
        tmp_path, f'[scanner]\nkind = "serial"\ndevice = "loop://"\nencoding = "{encoding}"\n'
    )
    run = run_tillpoint("--config", config, "config", "check", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run
    assert run.stderr.startswith("tillpoint: config [scanner]: ")
    assert f"scanner encoding {encoding!r} cannot decode a scan" in run.stderr


def test_a_scanner_encoding_that_decodes_is_taken() -> None:
    from tillpoint.printer.config import ScannerConfig

    for encoding in ("utf-8", "UTF8", "cp1251", "cp866", "ascii", "latin-1", "koi8_r"):
        assert ScannerConfig(encoding=encoding).encoding == encoding


@pytest.mark.parametrize("age", [7200, 86400, 604800])
def test_a_max_job_age_of_hours_or_days_is_taken(tmp_path: Path, age: int) -> None:
    """`max_job_age_s` is an age, not a timeout, yet it took the timeouts' bound, an hour:
    `max_job_age_s = 86400` ("no coupon from yesterday") was refused at start, "must be
    3600 or less", while no limit at all (the default) was taken. Up to a week now."""
    config = write_config(
        tmp_path, f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nmax_job_age_s = {age}\n'
    )
    run = run_tillpoint("--config", config, "config", "check", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout[run.stdout.index("{") :])["printer"]["max_job_age_s"] == age
    assert "max_job_age_s: " in refused(PrinterConfig, max_job_age_s=604801)
    assert "max_job_age_s: " in refused(PrinterConfig, max_job_age_s=0)


@pytest.mark.parametrize("charset", ["\x1b", "\x00", "1", "!"])
def test_a_cd5220_charset_that_is_no_letter_is_refused(tmp_path: Path, charset: str) -> None:
    """The message says "cd5220_charset must be one ASCII letter", the check `isascii()`: ESC
    or NUL (`"\\u001b"` in the TOML file) passed `config check` and went out as the `n` of
    `ESC f n` at every init, a command cut short that swallowed the next bytes; a digit
    or "!" names no CD5220 character set."""
    escaped = charset.encode("unicode_escape").decode().replace("\\x", "\\u00")
    config = write_config(
        tmp_path,
        '[display]\nkind = "serial"\ndevice = "loop://"\ncommand_set = "cd5220"\n'
        f'cd5220_charset = "{escaped}"\n',
    )
    run = run_tillpoint("--config", config, "config", "check", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run
    assert run.stderr.startswith("tillpoint: config [display]: ")
    assert "cd5220_charset must be one ASCII letter" in run.stderr
    from tillpoint.printer.config import DisplayConfig

    for letter in ("R", "U", "r"):
        assert DisplayConfig(cd5220_charset=letter).cd5220_charset == letter


def test_a_till_issued_coupon_code_is_what_its_offer_prints() -> None:
    """§13: an `issueCoupon` offer prints the one-time code the till issued, never the
    offer's `TP1-` code (`_offer_dict`'s `"code" not in out and …` as `or` replaced it);
    an id that is no text gets no code made (the print worker's check reports it)."""
    offers = [snapshot_offer(code="TP5TILL11"), {"id": "o-2", "printText": "Чай"}]
    data = json.loads(payload_source_for_checkout("r1", None, None, offers))
    assert [o["code"] for o in data["offers"]] == ["TP5TILL11", "TP1-o-2"]
    profile = resolve_profile(PrinterConfig())
    printed = render_escpos(offers_blocks(parse_payload(data)), profile)
    assert decode(printed)[0].codes == ["TP5TILL11", "TP1-o-2"]
    odd = json.loads(payload_source_for_checkout("r1", None, None, [{"id": 7, "printText": "x"}]))
    assert "code" not in odd["offers"][0]
    with pytest.raises(InputError, match=r"^bad print job payload: offers\.0\.id: "):
        parse_payload(odd)
