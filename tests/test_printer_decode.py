"""The ESC/POS decoder the virtual printer and the preview stand on."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.decode import Barcode, Decoder, Feed, Image, QRCode, StatusRequest, decode
from tillpoint.printer.layout import offers_blocks, render_escpos
from tillpoint.printer.payload import parse_payload
from tillpoint.printer.profiles import resolve_profile
from tillpoint.printer.render import render_png, render_text

ESC, GS, DLE = b"\x1b", b"\x1d", b"\x10"

JOB = render_escpos(
    offers_blocks(
        parse_payload(
            {
                "receiptId": "r-7",
                "firstName": "Пётр",
                "offers": [
                    {"id": "o-1", "text": "Скидка 10% на хлеб"},
                    {"id": "o-2", "text": "Кофе в подарок"},
                ],
            }
        )
    ),
    resolve_profile(PrinterConfig()),
)


def test_init_resets_the_code_table_so_a_stale_one_shows() -> None:
    # the trap: code page set before ESC @ is gone after it
    stale = ESC + b"t\x11" + ESC + b"@" + "Привет".encode("cp866") + b"\n" + GS + b"V\x00"
    [doc] = decode(stale)
    assert doc.text != "Привет"
    assert doc.text == "Привет".encode("cp866").decode("cp437")
    [good] = decode(ESC + b"@" + ESC + b"t\x11" + "Привет".encode("cp866") + b"\n")
    assert good.text == "Привет" and not good.complete


@given(st.lists(st.integers(min_value=1, max_value=len(JOB) - 1), max_size=12))
@settings(max_examples=40, deadline=None)
def test_commands_split_across_reads_decode_the_same(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [JOB[a:b] for a, b in zip([0, *points], [*points, len(JOB)], strict=True)]
    whole = decode(JOB)
    assert decode(chunks) == whole
    assert whole[0].codes == ["TP1-o-1", "TP1-o-2"]


def test_status_requests_are_reported_in_stream_order() -> None:
    dec = Decoder()
    reqs = dec.feed(DLE + b"\x04\x02" + b"abc\n" + GS + b"r\x01" + GS + b"(H\x06\x0000ABCD")
    assert reqs == [
        StatusRequest("DLE EOT", 2),
        StatusRequest("GS r", 1),
        StatusRequest("GS ( H", 48, b"ABCD"),
    ]


def test_barcodes_images_feeds_and_unknown_commands() -> None:
    data = (
        GS + b"kI\x09{BTP1-o-1"  # CODE128, function B
        + GS + b"k\x02" + b"4601234000017\x00"  # EAN13, function A
        + GS + b"v0\x00\x02\x00\x03\x00" + b"\xff\x00" * 3  # 16 x 3 raster
        + ESC + b"d\x03"
        + ESC + b"\x99"  # unknown
        + ESC + b"p\x00\x19\xfa"  # drawer kick
        + GS + b"V\x41\x03"  # feed and cut
    )  # fmt: skip
    [doc] = decode(data)
    assert doc.items[:4] == [
        Barcode("CODE128", "TP1-o-1"),
        Barcode("EAN13", "4601234000017"),
        Image(16, 3, b"\xff\x00" * 3),
        Feed(3),
    ]
    assert doc.complete
    assert "unknown ESC 0x99" in doc.notes
    assert any("cash drawer" in n for n in doc.notes)


def test_long_lines_wrap_at_the_paper_width_and_double_width_counts_twice() -> None:
    [doc] = decode(b"x" * 50 + b"\n" + ESC + b"!\x20" + b"y" * 30 + b"\n", columns=48)
    assert [len(line.text) for line in doc.lines] == [48, 2, 24, 6]


def test_preview_renderers_draw_the_decoded_job(tmp_path: object) -> None:
    [doc] = decode(JOB)
    text = render_text(doc, 48)
    assert "Пётр, ждём вас снова!" in text and "[QR: TP1-o-2]" in text
    assert text.rstrip().endswith("-" * 20 + " надрез " + "-" * 20)
    img = render_png(doc, width_px=576, columns=48)
    assert img.width == 576 + 32 and img.height > 400
    [qr] = [i for i in doc.items if isinstance(i, QRCode)][:1]
    assert qr.module_px == 6
