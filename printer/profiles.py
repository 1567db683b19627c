"""Printer profiles: paper width, columns, code table and what the printer can draw.

A profile is one of tillpoint's two generic ones or any python-escpos capabilities profile
(``TM-T20II``, ``TM-T88V``, ``RP326``, ``TSP600``, ``NT-5890K``, ...), with the configuration's
overrides applied:

=============== ======= ======== ============ ===========================================
name            columns width_px CP866 table  notes
=============== ======= ======== ============ ===========================================
generic-80mm    48      576      17           ESC/POS, native QR, partial/full cut
generic-58mm    32      384      17           ESC/POS, native QR, partial/full cut
=============== ======= ======== ============ ===========================================

The ESC t slot of a code page differs by vendor: CP866 is 17 on Epson and most Epson
compatibles, 59 (or 17) on the Zjiang/Netum/PBM clones, 7 on Rongta and Wincor Nixdorf, 10 on
Star (in ESC/POS emulation), 12 or 37 on Kefar, 11 on Aures. For a python-escpos profile the
slot comes from its database (the lowest slot it lists for the code page);
``codepage_table`` in the configuration always wins.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from tillpoint.printer import _escpos
from tillpoint.printer.config import PrinterConfig, check_single_byte_codec
from tillpoint.printer.errors import PrinterConfigError

__all__ = ["BUILTIN_PROFILES", "Profile", "resolve_profile"]

CodeMode = Literal["qr", "barcode", "raster-qr", "text"]


@dataclass(frozen=True)
class _Builtin:
    columns: int
    width_px: int
    dpi: int
    codepage_table: int


BUILTIN_PROFILES: dict[str, _Builtin] = {
    "generic-80mm": _Builtin(columns=48, width_px=576, dpi=203, codepage_table=17),
    "generic-58mm": _Builtin(columns=32, width_px=384, dpi=203, codepage_table=17),
}

_ALL_FEATURES = {
    "barcodeA": True,
    "barcodeB": True,
    "bitImageColumn": True,
    "bitImageRaster": True,
    "graphics": True,
    "qrCode": True,
    "paperFullCut": True,
    "paperPartCut": True,
}


@dataclass(frozen=True)
class Profile:
    """A resolved printer profile: everything layout and rendering need to know."""

    name: str
    base: str  # the python-escpos profile it is built on
    columns: int
    width_px: int
    dpi: int
    codepage: str  # Python codec
    codepage_table: int  # ESC t n
    qr_native: bool
    barcode_hw: bool
    raster: bool
    full_cut: bool
    part_cut: bool
    code_mode: Literal["auto", "qr", "barcode", "raster-qr", "text"] = "auto"
    qr_module_px: int = 6
    cut: Literal["full", "partial", "none"] = "partial"

    def escpos_profile(self) -> Any:
        """A python-escpos profile object with this profile's media, features and code page."""
        escpos = _escpos.load()
        prof = escpos.capabilities.get_profile(self.base)
        data = copy.deepcopy(prof.profile_data)
        data.setdefault("media", {})
        data["media"]["dpi"] = self.dpi
        data["media"]["width"] = {"mm": data["media"].get("width", {}).get("mm"), "pixels": 0}
        data["media"]["width"]["pixels"] = self.width_px
        data["codePages"] = {str(self.codepage_table): self.codepage.upper()}
        data["fonts"] = {"0": {"name": "Font A", "columns": self.columns}}
        features = dict(data.get("features", {}))
        features.update(
            qrCode=self.qr_native,
            barcodeA=self.barcode_hw,
            barcodeB=self.barcode_hw,
            bitImageRaster=self.raster,
            paperFullCut=self.full_cut,
            paperPartCut=self.part_cut,
        )
        data["features"] = features
        prof.profile_data = data
        return prof

    def code_modes(self) -> list[CodeMode]:
        """How an offer's code can be drawn, best first (the configuration may force one)."""
        if self.code_mode != "auto":
            return [self.code_mode, "text"] if self.code_mode != "text" else ["text"]
        modes: list[CodeMode] = []
        if self.qr_native:
            modes.append("qr")
        if self.barcode_hw:
            modes.append("barcode")
        if self.raster:
            modes.append("raster-qr")
        modes.append("text")
        return modes


def _escpos_profiles() -> dict[str, Any]:
    escpos = _escpos.load()
    profiles: dict[str, Any] = escpos.capabilities.CAPABILITIES["profiles"]
    return profiles


def resolve_profile(config: PrinterConfig) -> Profile:
    """Resolve the configured profile name and overrides; raise PrinterConfigError if unusable."""
    codec = check_single_byte_codec(config.codepage)
    name = config.profile
    if name in BUILTIN_PROFILES:
        b = BUILTIN_PROFILES[name]
        base = "default"
        columns, width_px, dpi, table = b.columns, b.width_px, b.dpi, b.codepage_table
        if codec != "cp866" and config.codepage_table is None:
            table = _table_in("default", codec, shown=name)
        features: dict[str, Any] = dict(_ALL_FEATURES)
    else:
        profiles = _escpos_profiles()
        if name not in profiles:
            known = ", ".join(sorted([*BUILTIN_PROFILES, *profiles], key=str.lower))
            raise PrinterConfigError(f"unknown printer profile {name!r}; known: {known}")
        data = profiles[name]
        base = name
        features = dict(data.get("features", {}))
        try:
            columns = int(data["fonts"]["0"]["columns"])
        except (KeyError, TypeError, ValueError):
            columns = 42
        media = data.get("media", {})
        try:
            width_px = int(media["width"]["pixels"])
        except (KeyError, TypeError, ValueError):
            width_px = columns * 12
        try:
            dpi = int(media["dpi"])
        except (KeyError, TypeError, ValueError):
            dpi = 203 if width_px >= 384 else 180
        table = -1 if config.codepage_table is not None else _table_in(name, codec)
    if config.codepage_table is not None:
        table = config.codepage_table
    return Profile(
        name=name,
        base=base,
        columns=config.columns or columns,
        width_px=config.width_px or width_px,
        dpi=dpi,
        codepage=codec,
        codepage_table=table,
        qr_native=bool(features.get("qrCode")),
        barcode_hw=bool(features.get("barcodeB")),
        raster=bool(features.get("bitImageRaster")),
        full_cut=bool(features.get("paperFullCut")),
        part_cut=bool(features.get("paperPartCut")),
        code_mode=config.code,
        qr_module_px=config.qr_module_px,
        cut=config.cut,
    )


def _table_in(profile: str, codec: str, shown: str | None = None) -> int:
    """The ESC t slot of `codec` in python-escpos's `profile`; the error names `shown`, the
    profile configured (a generic one is looked up in escpos's "default")."""
    pages: dict[str, str] = _escpos_profiles()[profile].get("codePages", {})
    wanted = {codec.upper(), codec.upper().replace("_", "-")}
    for slot, page in pages.items():
        try:
            page_codec = check_single_byte_codec(page)
        except ValueError:
            page_codec = ""
        if page.upper() in wanted or page_codec == codec:
            return int(slot)
    raise PrinterConfigError(
        f"printer profile {shown or profile!r} has no {codec.upper()} code table; "
        f"set codepage_table to the printer's ESC t slot for it"
    )
