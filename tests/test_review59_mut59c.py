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
    assert paper(
        payload_source_for_checkout(
            "r1", None, None, [snapshot_offer(validTo="9999-12-31T23:59:59Z")], MOSCOW
        )
    )[4] == "Действует по 31.12.9999"


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
    parse_payload({"receiptId": "r", "firstName": "А" * 100, "offers": [{"id": "o", "text": whole}]})
    for bad, where in (
        ({"receiptId": "r", "offers": [{"id": "o", "text": over}]}, "offers.0.text"),
        ({"receiptId": "r", "firstName": "А" * 101}, "firstName"),
    ):
        with pytest.raises(InputError, match=f"^bad print job payload: {where}: "):
            parse_payload(bad)


def test_a_job_holds_50_offers_and_ids_of_1_to_200_characters() -> None:
    one = {"id": "o", "text": "x"}
    assert len(parse_payload({"receiptId": "r", "offers": [one] * 50}).offers) == 50
    with pytest.raises(InputError, match="^bad print job payload: offers: .*at most 50"):
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
    for fine in (" TP1", "TP1~", "TP1-o-1"):
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
    with pytest.raises(InputError, match="^print job payload must be a JSON object$"):
        parse_payload("[1]")
    with pytest.raises(InputError, match="^print job payload is not JSON: "):
        parse_payload(b"{")
    with pytest.raises(InputError, match="^bad print job payload: receiptId: .*string$"):
        parse_payload({"receiptId": 5})
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
        ({"kind": "AMOUNT_OFF", "value": "150000.0"}, "Скидка 1 500,00 руб. за единицу товара акции"),
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
    try:
        found = socket.getaddrinfo(host, 9100, proto=socket.IPPROTO_TCP)[0][4][0]
    except OSError:
        pass
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
