"""An ESC/POS decoder: printer bytes back into text lines, QR codes, barcodes, images and cuts.

It reads what a receipt printer reads, so tests and the demo can check *what would be on the
paper* instead of comparing opaque bytes, and the preview can draw it. It behaves like an
Epson TM printer in the ways that matter for catching mistakes:

- ``ESC @`` resets the code table to slot 0 (CP437) and all text styles, so a job that forgets
  to send ``ESC t n`` after the init decodes Cyrillic as CP437 garbage, as the paper would;
- text wider than the paper wraps;
- commands split across reads (TCP segments) are reassembled;
- real-time status requests (``DLE EOT n``) and in-order ones (``GS r n``, ``GS ( H``) are
  reported in stream order, so a virtual printer can answer them at the right moment.

Unknown commands are skipped and recorded in :attr:`Document.notes`, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "EPSON_CODEPAGES",
    "Barcode",
    "Cut",
    "Decoder",
    "Document",
    "Feed",
    "Image",
    "Item",
    "Line",
    "QRCode",
    "Span",
    "StatusRequest",
    "decode",
]

Align = Literal["left", "center", "right"]

#: ESC t slots of the Epson standard character code tables (python codec names).
EPSON_CODEPAGES: dict[int, str] = {
    0: "cp437",
    2: "cp850",
    3: "cp860",
    4: "cp863",
    5: "cp865",
    13: "cp857",
    14: "cp737",
    15: "iso8859-7",
    16: "cp1252",
    17: "cp866",
    18: "cp852",
    19: "cp858",
    32: "cp720",
    33: "cp775",
    34: "cp855",
    35: "cp861",
    36: "cp862",
    37: "cp864",
    38: "cp869",
    39: "iso8859-2",
    40: "iso8859-15",
    44: "cp1125",
    45: "cp1250",
    46: "cp1251",
    47: "cp1253",
    48: "cp1254",
    49: "cp1255",
    50: "cp1256",
    51: "cp1257",
    52: "cp1258",
    53: "kz1048",  # KZ-1048 (RK1048), Kazakh: every Kazakh letter (review 42, polish42)
}


@dataclass
class Span:
    text: str
    bold: bool = False
    tall: bool = False
    wide: bool = False


@dataclass
class Line:
    spans: list[Span] = field(default_factory=list)
    align: Align = "left"

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.spans)

    @property
    def bold(self) -> bool:
        return any(s.bold for s in self.spans if s.text.strip())

    @property
    def tall(self) -> bool:
        return any(s.tall for s in self.spans if s.text.strip())


@dataclass(frozen=True)
class QRCode:
    data: str
    module_px: int = 3


@dataclass(frozen=True)
class Barcode:
    symbology: str
    data: str


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    raster: bytes  # rows of ceil(width / 8) bytes, MSB = leftmost dot, 1 = black


@dataclass(frozen=True)
class Feed:
    lines: int


@dataclass(frozen=True)
class Cut:
    partial: bool


@dataclass(frozen=True)
class StatusRequest:
    """A request the printer answers: ``DLE EOT n``, ``GS r n`` or ``GS ( H``."""

    command: Literal["DLE EOT", "GS r", "GS ( H"]
    n: int
    payload: bytes = b""


Item = Line | QRCode | Barcode | Image | Feed | Cut


@dataclass
class Document:
    """What came out of the printer between two cuts."""

    items: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    complete: bool = False  # ended with a cut

    @property
    def lines(self) -> list[Line]:
        return [i for i in self.items if isinstance(i, Line)]

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    @property
    def codes(self) -> list[str]:
        return [i.data for i in self.items if isinstance(i, QRCode | Barcode)]

    @property
    def empty(self) -> bool:
        return not any(not isinstance(i, Feed) for i in self.items)


_BARCODE_A = {0: "UPC-A", 1: "UPC-E", 2: "EAN13", 3: "EAN8", 4: "CODE39", 5: "ITF", 6: "NW7"}
_BARCODE_B = {
    65: "UPC-A",
    66: "UPC-E",
    67: "EAN13",
    68: "EAN8",
    69: "CODE39",
    70: "ITF",
    71: "NW7",
    72: "CODE93",
    73: "CODE128",
    74: "GS1-128",
    75: "GS1 DATABAR",
    76: "GS1 DATABAR",
    77: "GS1 DATABAR",
    78: "GS1 DATABAR",
}
# ESC commands with a fixed number of parameter bytes.
_ESC_ARGS = {
    ord("@"): 0, ord("2"): 0, ord("<"): 0, ord("i"): 0, ord("m"): 0, ord("F"): 0,
    ord("!"): 1, ord("-"): 1, ord("3"): 1, ord("E"): 1, ord("G"): 1, ord("J"): 1,
    ord("M"): 1, ord("R"): 1, ord("S"): 0, ord("L"): 0, ord("T"): 1, ord("U"): 1,
    ord("V"): 1, ord("a"): 1, ord("d"): 1, ord("e"): 1, ord("t"): 1, ord("{"): 1,
    ord(" "): 1, ord("%"): 1, ord("="): 1, ord("r"): 1, ord("c"): 2,
    ord("$"): 2, ord("\\"): 2, ord("B"): 2, ord("p"): 3, ord("W"): 8, ord("u"): 1,
    ord("v"): 0, ord("?"): 1, ord("A"): 1, ord("+"): 1,
}  # fmt: skip
_GS_ARGS = {
    ord("!"): 1, ord("B"): 1, ord("b"): 1, ord("h"): 1, ord("w"): 1, ord("H"): 1,
    ord("f"): 1, ord("a"): 1, ord("r"): 1, ord("I"): 1, ord("L"): 2, ord("W"): 2,
    ord("P"): 2, ord("$"): 2, ord("\\"): 2, ord("^"): 3, ord(":"): 0, ord("/"): 1,
    ord("T"): 1, ord("g"): 3, ord("j"): 1, ord("z"): 1, ord("c"): 0, ord("<"): 0,
    ord("G"): 1, ord("A"): 2,
}  # fmt: skip


class _Incomplete(Exception):
    """The buffer ends inside a command: wait for more bytes."""


class Decoder:
    """Incremental ESC/POS decoder. :meth:`feed` bytes as they arrive."""

    def __init__(self, columns: int = 48, codepages: Mapping[int, str] | None = None) -> None:
        self.columns = columns
        self.codepages = dict(EPSON_CODEPAGES)
        if codepages:
            self.codepages.update(codepages)
        self.documents: list[Document] = []
        self.requests: list[StatusRequest] = []
        self.bytes_seen = 0
        # cuts of blank paper (nothing but feeds since the last cut: the cut a job sent
        # after a torn attempt begins with, when nothing torn came before it): counted,
        # not documents
        self.blank_cuts = 0
        self._buf = bytearray()
        self._qr_data = b""
        self._qr_module = 3
        self._reset()
        self._doc = Document()
        self._line = Line()
        self._cells = 0

    def _reset(self) -> None:
        self.codepage = 0
        self.bold = False
        self.tall = False
        self.wide = False
        self.align: Align = "left"

    # ------------------------------------------------------------------ output helpers
    @property
    def current(self) -> Document:
        """The document being printed (not yet cut)."""
        return self._doc

    def _note(self, text: str) -> None:
        self._doc.notes.append(text)

    def _emit(self, item: Item) -> None:
        self._doc.items.append(item)

    def _end_line(self, force: bool = True) -> None:
        if self._line.spans or force:
            self._emit(self._line)
        self._line = Line(align=self.align)
        self._cells = 0

    def _flush_partial_line(self) -> None:
        if self._line.spans:
            self._end_line()

    def _char(self, ch: str) -> None:
        width = 2 if self.wide else 1
        if self._cells + width > self.columns:
            self._end_line()
        if not self._line.spans:
            self._line.align = self.align
        spans = self._line.spans
        if spans and (spans[-1].bold, spans[-1].tall, spans[-1].wide) == (
            self.bold,
            self.tall,
            self.wide,
        ):
            spans[-1].text += ch
        else:
            spans.append(Span(ch, self.bold, self.tall, self.wide))
        self._cells += width

    def _cut(self, partial: bool) -> None:
        self._flush_partial_line()
        if self._doc.empty:  # a blank strip, nothing printed on it: not a document
            self.blank_cuts += 1
            self._doc = Document()
            return
        self._emit(Cut(partial))
        self._doc.complete = True
        self.documents.append(self._doc)
        self._doc = Document()

    def finish(self) -> Document | None:
        """End of stream: return the uncut remainder as an incomplete document, if any."""
        self._flush_partial_line()
        doc, self._doc = self._doc, Document()
        if doc.empty:
            return None
        self.documents.append(doc)
        return doc

    # ------------------------------------------------------------------ parsing
    def feed(self, data: bytes) -> list[StatusRequest]:
        """Decode ``data``; return the status requests it held, in order."""
        self.bytes_seen += len(data)
        self._buf += data
        found: list[StatusRequest] = []
        i = 0
        buf = self._buf
        while i < len(buf):
            try:
                i, req = self._step(buf, i)
            except _Incomplete:
                break
            if req is not None:
                found.append(req)
                self.requests.append(req)
        del buf[:i]
        return found

    def _need(self, buf: bytearray, end: int) -> None:
        if end > len(buf):
            raise _Incomplete

    def _step(self, buf: bytearray, i: int) -> tuple[int, StatusRequest | None]:
        b = buf[i]
        if b == 0x1B:
            return self._esc(buf, i)
        if b == 0x1D:
            return self._gs(buf, i)
        if b == 0x10:
            return self._dle(buf, i)
        if b == 0x1C:
            self._need(buf, i + 2)
            self._note(f"FS {buf[i + 1]:#04x}")
            return i + 2, None
        if b == 0x0A:
            self._end_line()
            return i + 1, None
        if b == 0x0C:
            self._end_line(force=bool(self._line.spans))
            return i + 1, None
        if b == 0x09:
            for _ in range(8 - self._cells % 8):
                self._char(" ")
            return i + 1, None
        if b < 0x20:
            return i + 1, None  # CR, NUL, CAN, BEL, ...: no mark on the paper
        # a run of text
        j = i
        while j < len(buf) and buf[j] >= 0x20:
            j += 1
        codec = self.codepages.get(self.codepage)
        chunk = bytes(buf[i:j])
        if codec is None:
            text = "".join(chr(c) if c < 0x80 else "\ufffd" for c in chunk)
        else:
            text = chunk.decode(codec, errors="replace")
        for ch in text:
            self._char(ch)
        return j, None

    def _esc(self, buf: bytearray, i: int) -> tuple[int, StatusRequest | None]:
        self._need(buf, i + 2)
        cmd = buf[i + 1]
        if cmd == ord("*"):  # bit image: ESC * m nL nH d...
            self._need(buf, i + 5)
            m, n = buf[i + 2], buf[i + 3] + 256 * buf[i + 4]
            end = i + 5 + n * (3 if m in (32, 33) else 1)
            self._need(buf, end)
            self._note(f"ESC * column image {n} dots wide")
            return end, None
        if cmd == ord("D"):  # tab stops, NUL-terminated
            end = buf.find(b"\x00", i + 2)
            if end < 0:
                raise _Incomplete
            return end + 1, None
        nargs = _ESC_ARGS.get(cmd)
        if nargs is None:
            self._note(f"unknown ESC {cmd:#04x}")
            return i + 2, None
        end = i + 2 + nargs
        self._need(buf, end)
        args = buf[i + 2 : end]
        if cmd == ord("@"):
            self._flush_partial_line()
            self._reset()
        elif cmd == ord("t"):
            self.codepage = args[0]
            if args[0] not in self.codepages:
                self._note(f"code table {args[0]} unknown to this decoder")
        elif cmd == ord("!"):
            self.bold = bool(args[0] & 0x08)
            self.tall = bool(args[0] & 0x10)
            self.wide = bool(args[0] & 0x20)
        elif cmd in (ord("E"), ord("G")):
            self.bold = bool(args[0] & 1)
        elif cmd == ord("a"):
            self.align = {0: "left", 1: "center", 2: "right"}.get(args[0] % 48, "left")  # type: ignore[assignment]
            if not self._line.spans:
                self._line.align = self.align
        elif cmd == ord("d"):
            self._flush_partial_line()
            self._emit(Feed(args[0]))
        elif cmd == ord("J"):
            self._flush_partial_line()
        elif cmd in (ord("i"), ord("m")):
            self._cut(partial=cmd == ord("m"))
        elif cmd == ord("p"):
            self._note(f"cash drawer pulse on pin {2 if args[0] % 48 == 0 else 5}")
        elif cmd == ord("B"):
            self._note("buzzer")
        return end, None

    def _gs(self, buf: bytearray, i: int) -> tuple[int, StatusRequest | None]:
        self._need(buf, i + 2)
        cmd = buf[i + 1]
        if cmd == ord("V"):
            self._need(buf, i + 3)
            m = buf[i + 2]
            end = i + 4 if m in (65, 66, 97, 98, 103, 104) else i + 3
            self._need(buf, end)
            self._cut(partial=m in (1, 49, 66, 98, 104))
            return end, None
        if cmd == ord("k"):
            return self._barcode(buf, i)
        if cmd == ord("("):
            self._need(buf, i + 5)
            fn_group = buf[i + 2]
            size = buf[i + 3] + 256 * buf[i + 4]
            end = i + 5 + size
            self._need(buf, end)
            body = bytes(buf[i + 5 : end])
            return end, self._gs_paren(fn_group, body)
        if cmd == ord("8"):  # GS 8 L p1 p2 p3 p4 ...
            self._need(buf, i + 7)
            size = int.from_bytes(buf[i + 3 : i + 7], "little")
            end = i + 7 + size
            self._need(buf, end)
            self._note("GS 8 L graphics")
            return end, None
        if cmd == ord("v"):  # GS v 0 m xL xH yL yH d...
            self._need(buf, i + 8)
            wb = buf[i + 4] + 256 * buf[i + 5]
            h = buf[i + 6] + 256 * buf[i + 7]
            end = i + 8 + wb * h
            self._need(buf, end)
            self._flush_partial_line()
            self._emit(Image(width=wb * 8, height=h, raster=bytes(buf[i + 8 : end])))
            return end, None
        if cmd == ord("*"):  # GS * x y d... (downloaded bit image)
            self._need(buf, i + 4)
            end = i + 4 + buf[i + 2] * buf[i + 3] * 8
            self._need(buf, end)
            return end, None
        nargs = _GS_ARGS.get(cmd)
        if nargs is None:
            self._note(f"unknown GS {cmd:#04x}")
            return i + 2, None
        end = i + 2 + nargs
        self._need(buf, end)
        args = buf[i + 2 : end]
        if cmd == ord("!"):
            self.wide = bool(args[0] & 0x70)
            self.tall = bool(args[0] & 0x07)
        elif cmd == ord("r"):
            return end, StatusRequest("GS r", args[0] % 48)
        return end, None

    def _gs_paren(self, group: int, body: bytes) -> StatusRequest | None:
        if group == ord("k") and len(body) >= 2:
            cn, fn = body[0], body[1]
            if cn == 49:  # QR code
                if fn == 67 and len(body) >= 3:
                    self._qr_module = body[2]
                elif fn == 80:  # store: m data
                    self._qr_data = body[3:]
                elif fn == 81:  # print
                    self._flush_partial_line()
                    self._emit(
                        QRCode(self._qr_data.decode("utf-8", errors="replace"), self._qr_module)
                    )
            elif cn == 48 and fn == 81:
                self._note("PDF417 symbol")
            return None
        if group == ord("H") and len(body) >= 2 and body[0] == 48:
            return StatusRequest("GS ( H", body[1], body[2:])
        if group == ord("L"):
            self._note("GS ( L graphics")
        return None

    def _barcode(self, buf: bytearray, i: int) -> tuple[int, StatusRequest | None]:
        self._need(buf, i + 3)
        m = buf[i + 2]
        if m <= 6:
            end = buf.find(b"\x00", i + 3)
            if end < 0:
                raise _Incomplete
            data, nxt = bytes(buf[i + 3 : end]), end + 1
            name = _BARCODE_A.get(m, f"type {m}")
        else:
            self._need(buf, i + 4)
            n = buf[i + 3]
            nxt = i + 4 + n
            self._need(buf, nxt)
            data = bytes(buf[i + 4 : nxt])
            name = _BARCODE_B.get(m, f"type {m}")
        self._flush_partial_line()
        text = _code128_text(data) if name in ("CODE128", "GS1-128") else data.decode("latin-1")
        self._emit(Barcode(name, text))
        return nxt, None

    def _dle(self, buf: bytearray, i: int) -> tuple[int, StatusRequest | None]:
        self._need(buf, i + 2)
        cmd = buf[i + 1]
        if cmd == 0x04:  # DLE EOT n
            self._need(buf, i + 3)
            n = buf[i + 2]
            if n in (7, 8):
                self._need(buf, i + 4)
                return i + 4, StatusRequest("DLE EOT", n, bytes(buf[i + 3 : i + 4]))
            return i + 3, StatusRequest("DLE EOT", n)
        if cmd == 0x05:  # DLE ENQ n
            self._need(buf, i + 3)
            return i + 3, None
        if cmd == 0x14:  # DLE DC4 fn ...
            self._need(buf, i + 3)
            fn = buf[i + 2]
            extra = {1: 2, 2: 2, 7: 1, 8: 7}.get(fn, 0)
            self._need(buf, i + 3 + extra)
            if fn == 1:
                self._note("cash drawer pulse (real-time)")
            return i + 3 + extra, None
        return i + 1, None  # a bare DLE byte


def _code128_text(data: bytes) -> str:
    """The human text of ESC/POS CODE128 data ("{B" code set prefixes and "{{" escapes)."""
    out: list[str] = []
    code_set = "B"
    i = 0
    while i < len(data):
        c = data[i]
        if c == ord("{") and i + 1 < len(data):
            nxt = chr(data[i + 1])
            if nxt in "ABC":
                code_set = nxt
            elif nxt == "{":
                out.append("{")
            i += 2  # FNC1-4 and SHIFT carry no text
            continue
        out.append(f"{c:02d}" if code_set == "C" else chr(c))
        i += 1
    return "".join(out)


def decode(
    data: bytes | Iterable[bytes],
    columns: int = 48,
    codepages: Mapping[int, str] | None = None,
) -> list[Document]:
    """Decode a whole byte stream; the last document is incomplete if it was not cut."""
    dec = Decoder(columns=columns, codepages=codepages)
    for chunk in [data] if isinstance(data, bytes | bytearray) else data:
        dec.feed(bytes(chunk))
    dec.finish()
    return dec.documents
