"""The offers block: exact ESC/POS bytes through python-escpos, code pages, codes, wrapping."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tillpoint.printer import _escpos
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.decode import Barcode, Image, QRCode, decode
from tillpoint.printer.errors import PrinterConfigError
from tillpoint.printer.layout import offers_blocks, render_escpos
from tillpoint.printer.payload import parse_payload
from tillpoint.printer.profiles import resolve_profile
from tillpoint.printer.text import degrade

ESC, GS = b"\x1b", b"\x1d"

PAYLOAD = {
    "receiptId": "s1-t1-000123",
    "at": "2026-11-23T10:15:00+03:00",
    "firstName": "Анна",
    "offers": [
        {
            "id": "o-1",
            "text": "−15% на молоко",
            "validFrom": "2026-11-01T00:00:00+03:00",
            "validTo": "2026-11-30T23:59:59+03:00",
            "code": "TP1-o-1",
        }
    ],
}


def cp(text: str) -> bytes:
    return text.encode("cp866")


def render(payload: dict[str, object] = PAYLOAD, **config: object) -> bytes:
    profile = resolve_profile(PrinterConfig(**config))  # type: ignore[arg-type]
    return render_escpos(offers_blocks(parse_payload(payload)), profile)


def test_offers_block_bytes_are_exact_on_a_generic_80mm_printer() -> None:
    expected = (
        ESC + b"@"  # init ...
        + ESC + b"t\x11"  # ... and only then CP866 (slot 17): ESC @ resets the table
        + ESC + b"!\x00" + ESC + b"!\x00" + ESC + b"!\x10"  # double height
        + ESC + b"E\x01" + ESC + b"a\x01" + cp("ВАШИ ПРЕДЛОЖЕНИЯ") + b"\n"
        + (ESC + b"!\x00") * 3 + cp("Анна, ждём вас снова!") + b"\n"  # ESC ! 0 ends bold too
        + ESC + b"a\x00" + b"=" * 48 + b"\n"
        + ESC + b"E\x01" + cp("-15% на молоко") + b"\n"  # U+2212 is not in CP866: "-"
        + ESC + b"E\x00" + cp("Действует с 01.11 по 30.11.2026") + b"\n"
        + ESC + b"a\x01"
        + GS + b"(k\x04\x001A2\x00"  # QR model 2
        + GS + b"(k\x03\x001C\x06"  # module 6 dots
        + GS + b"(k\x03\x001E1"  # error correction M
        + GS + b"(k\x0a\x001P0TP1-o-1"  # store the data
        + GS + b"(k\x03\x001Q0" + b"\n"  # print it
        + b"TP1-o-1\n"
        + ESC + b"a\x00" + b"=" * 48 + b"\n"
        + ESC + b"a\x01" + cp("Чек s1-t1-000123, 23.11.2026 10:15") + b"\n"
        + ESC + b"d\x06" + GS + b"V\x01"  # feed past the cutter, partial cut: the last bytes
    )  # fmt: skip
    assert render() == expected


def test_decoded_coupon_reads_back_as_text_code_and_cut() -> None:
    [doc] = decode(render())
    assert doc.complete
    assert doc.codes == ["TP1-o-1"]
    assert doc.text.splitlines() == [
        "ВАШИ ПРЕДЛОЖЕНИЯ",
        "Анна, ждём вас снова!",
        "=" * 48,
        "-15% на молоко",
        "Действует с 01.11 по 30.11.2026",
        "",
        "TP1-o-1",
        "=" * 48,
        "Чек s1-t1-000123, 23.11.2026 10:15",
    ]
    heading = doc.lines[0]
    assert heading.bold and heading.tall and heading.align == "center"


def test_the_agents_payload_with_open_ended_offers_prints() -> None:
    payload = {
        **PAYLOAD,
        "firstName": "",
        "offers": [
            {"id": "o-9", "text": "Кофе", "validFrom": "", "validTo": "", "code": "TP1-o-9"}
        ],
    }
    [doc] = decode(render(payload))
    assert "Ждём вас снова!" in doc.text
    # §7 prints every offer with its validity: an open-ended one says so (it printed none)
    assert "Действует без ограничения срока" in doc.text
    assert doc.codes == ["TP1-o-9"]


@pytest.mark.parametrize(
    ("profile", "table"),
    [("TM-T20II", 17), ("RP326", 7), ("TSP600", 10), ("KR-306", 12), ("NT-5890K", 17)],
)
def test_code_table_slot_follows_the_vendor_profile(profile: str, table: int) -> None:
    data = render(profile=profile)
    assert data.startswith(ESC + b"@" + ESC + b"t" + bytes([table]))
    [doc] = decode(data, codepages={table: "cp866"})
    assert "Анна, ждём вас снова!" in doc.text


def test_code_table_is_configurable_per_printer() -> None:
    data = render(profile="POS-5890", codepage_table=59)
    assert data.startswith(ESC + b"@" + ESC + b"t;")  # 59
    assert b"\x1bt" not in data[5:]  # set once, never switched mid-job


def test_cp1251_prints_ukrainian_letters_cp866_lacks() -> None:
    payload = {**PAYLOAD, "offers": [{**PAYLOAD["offers"][0], "text": "Ґанок, Іван, їжак"}]}  # type: ignore[dict-item]
    [doc866] = decode(render(payload))
    assert "Ганок, Iван, їжак" in doc866.text  # Ґ → Г, І → Latin I: readable, no crash
    data = render(payload, codepage="cp1251")
    assert data.startswith(ESC + b"@" + ESC + b"t.")  # CP1251 is slot 46 on Epson
    [doc1251] = decode(data)
    assert "Ґанок, Іван, їжак" in doc1251.text


def test_a_profile_without_the_code_page_needs_an_explicit_slot() -> None:
    with pytest.raises(PrinterConfigError, match="codepage_table"):
        resolve_profile(PrinterConfig(profile="TM-T88IV-SA"))
    assert (
        resolve_profile(PrinterConfig(profile="TM-T88IV-SA", codepage_table=17)).codepage_table
        == 17
    )
    with pytest.raises(PrinterConfigError, match="unknown printer profile"):
        resolve_profile(PrinterConfig(profile="no-such-printer"))


def test_without_native_qr_the_code_becomes_a_code128_barcode() -> None:
    [doc] = decode(render(profile="TH230"))  # Wincor Nixdorf TH230: barcodes, no QR
    assert [type(i) for i in doc.items if isinstance(i, QRCode | Barcode)] == [Barcode]
    assert doc.items[[isinstance(i, Barcode) for i in doc.items].index(True)] == Barcode(
        "CODE128", "TP1-o-1"
    )


def test_without_qr_or_barcodes_the_code_is_a_raster_qr_image() -> None:
    data = render(profile="NT-5890K")  # 58 mm Netum: raster images only
    [doc] = decode(data)
    images = [i for i in doc.items if isinstance(i, Image)]
    assert len(images) == 1 and images[0].width <= 384
    assert len(data) < 4000  # not a 576-dot wide padded image


def test_a_code_too_long_for_a_barcode_falls_back_to_the_raster_qr() -> None:
    long_offer = {**PAYLOAD["offers"][0], "id": "x" * 40, "code": "TP1-" + "x" * 40}  # type: ignore[dict-item]
    [doc] = decode(render({**PAYLOAD, "offers": [long_offer]}, profile="TH230"))
    assert any(isinstance(i, Image) for i in doc.items)
    assert not any(isinstance(i, Barcode) for i in doc.items)


def test_text_mode_prints_the_code_in_letters_only() -> None:
    [doc] = decode(render(code="text"))
    assert doc.codes == []
    assert "TP1-o-1" in doc.text


def test_58mm_wraps_at_32_columns_and_cuts_fully_when_asked() -> None:
    offer = {**PAYLOAD["offers"][0], "text": "Двойные бонусы на всю выпечку «Хлебный дом» от 300 ₽"}  # type: ignore[dict-item]
    data = render({**PAYLOAD, "offers": [offer]}, profile="generic-58mm", cut="full")
    assert data.endswith(ESC + b"d\x06" + GS + b"V\x00")
    [doc] = decode(data, columns=32)
    assert all(len(line.text) <= 32 for line in doc.lines)
    assert '"Хлебный дом" от 300 Р' in doc.text.replace("\n", " ")


def test_printer_commands_in_offer_text_never_reach_the_printer() -> None:
    evil = {
        **PAYLOAD["offers"][0],
        "text": "Скидка\x1bp\x00\x19\xfa\x1dV\x00 10%",
    }  # drawer kick, cut
    data = render({**PAYLOAD, "offers": [evil]})  # type: ignore[dict-item]
    assert b"\x1bp" not in data
    [doc] = decode(data)
    assert doc.notes == []
    assert len([i for i in doc.items if type(i).__name__ == "Cut"]) == 1


def test_rendering_with_every_python_escpos_profile_keeps_stdout_clean(
    capsys: pytest.CaptureFixture[str],
) -> None:
    escpos = _escpos.load()
    for name in escpos.capabilities.CAPABILITIES["profiles"]:
        for code in ("auto", "barcode", "raster-qr"):
            profile = resolve_profile(PrinterConfig(profile=name, codepage_table=17, code=code))  # type: ignore[arg-type]
            [doc] = decode(render_escpos(offers_blocks(parse_payload(PAYLOAD)), profile))
            assert doc.complete or not (profile.full_cut or profile.part_cut)  # no cutter
            assert "ждём" in doc.text and doc.codes in ([], ["TP1-o-1"])
    assert capsys.readouterr().out == ""


names = st.text(min_size=0, max_size=30)
texts = st.text(min_size=0, max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=names,
    offer_texts=st.lists(texts, min_size=1, max_size=4),
    profile=st.sampled_from(["generic-80mm", "generic-58mm"]),
)
def test_any_text_prints_without_crashing_and_fits_the_paper(
    first: str, offer_texts: list[str], profile: str
) -> None:
    payload = {
        "receiptId": "r-1",
        "firstName": first,
        "offers": [{"id": f"o-{i}", "text": t} for i, t in enumerate(offer_texts)],
    }
    prof = resolve_profile(PrinterConfig(profile=profile))
    data = render_escpos(offers_blocks(parse_payload(payload)), prof)
    docs = decode(data, columns=prof.columns)
    assert len(docs) == 1 and docs[0].complete
    doc = docs[0]
    assert doc.codes == [f"TP1-o-{i}" for i in range(len(offer_texts))]
    assert all(len(line.text) <= prof.columns for line in doc.lines)
    assert doc.notes == []
    printed = "".join(doc.text.split())
    for text in offer_texts:
        assert "".join(degrade(text, "cp866").split()) in printed
