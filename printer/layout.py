"""The offers block: what is printed after a commit, and its ESC/POS bytes (python-escpos).

Layout (80 mm, 48 columns)::

             ВАШИ ПРЕДЛОЖЕНИЯ              (bold, double height, centred)
            Анна, ждём вас снова!          (centred; only the first name)
    ================================================
    -15% на молоко                          (bold, wrapped)
    Действует с 01.11 по 30.11.2026
                   [QR TP1-o-1]              (native QR, else CODE128, else raster QR)
                     TP1-o-1                 (the code in letters, for typing it in)
    ------------------------------------------------
    ...
             Чек s1-t1-000123, 23.11.2026 10:15
    --- cut ---

:func:`offers_blocks` builds the layout as a list of blocks (pure, no printer involved);
:func:`render_escpos` turns blocks into the exact bytes for a profile with python-escpos'
``Dummy`` printer. The preview (``cli_support.preview``) decodes those same bytes, so what a
marketer sees is what the printer gets.

The byte stream always starts with ``ESC @`` and then ``ESC t n`` (the code table is set
*after* the init, which resets it), and ends with the cut: nothing follows the cut, which the
print queue relies on (a job whose cut was not handed over did not print completely).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tillpoint.printer import _escpos
from tillpoint.printer.messages import first_name_only
from tillpoint.printer.payload import PrintPayload
from tillpoint.printer.profiles import CodeMode, Profile
from tillpoint.printer.text import degrade, wrap

__all__ = [
    "Block",
    "Code",
    "Cut",
    "Feed",
    "Rule",
    "Text",
    "barcode_fits",
    "offers_blocks",
    "render_escpos",
]

Align = Literal["left", "center", "right"]


@dataclass(frozen=True)
class Text:
    """A paragraph, word-wrapped to the paper width."""

    text: str
    align: Align = "left"
    bold: bool = False
    tall: bool = False  # double height (the width stays, so wrapping does not change)


@dataclass(frozen=True)
class Rule:
    char: str = "-"


@dataclass(frozen=True)
class Code:
    """A scannable code: QR, CODE128 or, as the last resort, the code in letters."""

    data: str


@dataclass(frozen=True)
class Feed:
    lines: int = 1


@dataclass(frozen=True)
class Cut:
    pass


Block = Text | Rule | Code | Feed | Cut

ESC = b"\x1b"
GS = b"\x1d"


def _date(dt: datetime) -> str:
    return dt.strftime("%d.%m.%Y")


def validity(valid_from: datetime | None, valid_to: datetime | None) -> str:
    """ "Действует с 01.11 по 30.11.2026", in the offset the payload gives (the agent
    writes the store's local time); a time of day when the bound is not a day's start or
    end ("по 23.11.2026 10:15": a bare date read as the whole day); "Действует без
    ограничения срока" when it has no bounds (§7 prints every offer with its validity)."""
    start = f"{valid_from:%d.%m}" if valid_from else ""
    if valid_from and (valid_from.hour, valid_from.minute) != (0, 0):
        start = f"{_date(valid_from)} {valid_from:%H:%M}"
    elif valid_from and not (valid_to and valid_from.year == valid_to.year):
        start = _date(valid_from)
    end = ""
    if valid_to:
        end = _date(valid_to)
        if (valid_to.hour, valid_to.minute) != (23, 59):
            end += f" {valid_to:%H:%M}"
    if start and end:
        return f"Действует с {start} по {end}"
    if end:
        return f"Действует по {end}"
    if start:
        return f"Действует с {start}"
    return "Действует без ограничения срока"


def _first_name(name: str | None) -> str:
    """Only the first word of the first name: never more than the contract §8 allows (the
    display's rule, `first_name_only`: a zero-width space parts two names there too)."""
    return first_name_only(name)


def offers_blocks(
    payload: PrintPayload, *, heading: str = "ВАШИ ПРЕДЛОЖЕНИЯ", codepage: str | None = None
) -> list[Block]:
    """The offers block for one committed receipt, ending in a cut. With the printer's
    `codepage`, a first name in letters it lacks is left out ("Ждём вас снова!"), never
    printed as "???"."""
    blocks: list[Block] = [Text(heading, align="center", bold=True, tall=True)]
    name = _first_name(payload.first_name)
    if codepage is not None and degrade(name, codepage).count("?") > name.count("?"):
        name = ""
    blocks.append(Text(f"{name}, ждём вас снова!" if name else "Ждём вас снова!", align="center"))
    blocks.append(Rule("="))
    for i, offer in enumerate(payload.offers):
        if i:
            blocks.append(Rule("-"))
        for paragraph in offer.text.splitlines() or [""]:
            blocks.append(Text(paragraph, bold=True))
        valid = validity(offer.valid_from, offer.valid_to)
        if valid:
            blocks.append(Text(valid))
        blocks.append(Code(offer.scan_code))
        blocks.append(Text(offer.scan_code, align="center"))
    blocks.append(Rule("="))
    footer = f"Чек {payload.receipt_id}"
    if payload.at is not None:
        footer += f", {payload.at:%d.%m.%Y %H:%M}"
    blocks.append(Text(footer, align="center"))
    blocks.append(Cut())
    return blocks


def barcode_fits(data: str, width_px: int, module_px: int = 2) -> bool:
    """Whether CODE128 set B of ``data`` (with quiet zones) fits the printable width."""
    modules = 11 * len(data) + 35 + 20  # data, start + check + stop, 10-module quiet zones
    return data.isascii() and module_px * modules <= width_px


def _code_mode(data: str, profile: Profile) -> CodeMode:
    for mode in profile.code_modes():
        if mode == "barcode" and not barcode_fits(data, profile.width_px):
            continue
        return mode
    return "text"  # pragma: no cover - "text" is always last


def _qr_image(data: str, module_px: int) -> Any:
    qrcode: Any = importlib.import_module("qrcode")  # a python-escpos dependency; no stubs

    qr = qrcode.QRCode(
        version=None,
        box_size=module_px,
        border=2,
        error_correction=qrcode.constants.ERROR_CORRECT_M,
    )
    qr.add_data(data)
    qr.make(fit=True)
    return qr.make_image().get_image().convert("1")


def render_escpos(blocks: Sequence[Block], profile: Profile) -> bytes:
    """The ESC/POS bytes of ``blocks`` for ``profile``, built with python-escpos' Dummy."""
    escpos = _escpos.load()
    const = escpos.constants
    p = escpos.printer.Dummy(profile=profile.base)
    p.profile = profile.escpos_profile()  # get_profile() only takes names or its own class
    codec = profile.codepage
    cols = profile.columns

    p.hw("INIT")
    p._raw(const.CODEPAGE_CHANGE + bytes([profile.codepage_table]))

    style: dict[str, Any] = {"align": "left", "bold": False, "tall": False}  # state after INIT

    def restyle(align: Align, bold: bool = False, tall: bool = False) -> None:
        """Send only what changes: fewer bytes, and a readable stream in tests."""
        if tall != style["tall"]:
            p.set(normal_textsize=not tall, double_height=tall)  # ESC ! n (resets bold)
            style["bold"] = False
        if bold != style["bold"]:
            p.set(bold=bold)
        if align != style["align"]:
            p.set(align=align)
        style.update(align=align, bold=bold, tall=tall)

    def line(text: str) -> None:
        p._raw(degrade(text, codec).encode(codec) + b"\n")

    for block in blocks:
        if isinstance(block, Text):
            restyle(block.align, block.bold, block.tall)
            for text in wrap(degrade(block.text, codec), cols):
                line(text)
        elif isinstance(block, Rule):
            restyle("left")
            line(block.char * cols)
        elif isinstance(block, Feed):
            p.print_and_feed(block.lines)
        elif isinstance(block, Code):
            restyle("center")
            _render_code(p, block.data, profile)
        elif isinstance(block, Cut):
            _cut(p, profile)
    out: bytes = p.output
    return out


def separator_bytes(profile: Profile, codes: Iterable[str] = ()) -> bytes:
    """What a job sent after a torn attempt starts with: NULs that end a command the torn
    part broke off (its parameters or a code's data: the printer ignores a NUL as text),
    the init (it clears the torn part's unprinted line), then a feed and the cut. The
    torn part comes off as its own piece of paper, the coupon after it whole: glued on,
    the fragment's offers were printed twice above the coupon's own, and a command it
    broke off ate the coupon's first bytes (review 32). `codes`: the offer codes of the
    torn job: the NULs outlast the longest command any of them is drawn with (a raster
    QR's dots, some 2 KB and more; a native QR of a long id: 96 NULs ended only a QR of
    some 60 bytes, and the rest ate the cut and the coupon's first lines; rev32b)."""
    escpos = _escpos.load()
    p = escpos.printer.Dummy(profile=profile.base)
    p.profile = profile.escpos_profile()
    p._raw(b"\x00" * torn_command_max(profile, codes))
    p.hw("INIT")
    _cut(p, profile)
    out: bytes = p.output
    return out


def _cut(p: Any, profile: Profile) -> None:
    """The profile's cut; a printer without a cutter gets six lines of feed instead."""
    if profile.cut == "none":
        p.print_and_feed(6)
    else:
        p.cut(mode="PART" if profile.cut == "partial" else "FULL")


# The longest command a coupon holds besides its codes: a style's parameters, a feed's;
# a code's is measured (`torn_command_max`).
TORN_COMMAND_MAX = 96


def torn_command_max(profile: Profile, codes: Iterable[str]) -> int:
    """At least the length of the longest command a coupon with these codes holds: each
    code drawn alone (its QR, barcode or raster image, all its commands together)."""
    escpos = _escpos.load()
    longest = TORN_COMMAND_MAX
    for data in dict.fromkeys(codes):
        p = escpos.printer.Dummy(profile=profile.base)
        p.profile = profile.escpos_profile()
        _render_code(p, data, profile)
        longest = max(longest, len(p.output))
    return longest


def _render_code(p: Any, data: str, profile: Profile) -> None:
    mode = _code_mode(data, profile)
    if mode == "qr":
        escpos = _escpos.load()
        p.qr(data, ec=escpos.constants.QR_ECLEVEL_M, size=profile.qr_module_px, native=True)
        p._raw(b"\n")
    elif mode == "barcode":
        # _hw_barcode directly: Escpos.barcode() print()s "Using hardware barcode renderer".
        p._hw_barcode(
            "{B" + data,
            "CODE128",
            height=max(48, profile.dpi // 3),
            width=2,
            pos="OFF",
            font="A",
            align_ct=True,
            function_type="B",
        )
        p._raw(b"\n")
    elif mode == "raster-qr":
        img = _qr_image(data, max(2, profile.qr_module_px // 2 + 2))
        if img.width > profile.width_px:
            img = _qr_image(data, 2)
        p.image(img, impl="bitImageRaster", center=False)  # ESC a 1 centres it; no 576-dot padding
    # "text": the code is printed in letters right below in any case
