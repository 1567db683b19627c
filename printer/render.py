"""Draw a decoded printer :class:`~tillpoint.printer.decode.Document` as text or as a PNG.

Both work from what the printer *received* (see ``decode.py``), so the preview shows the
degraded characters, the wrapping and the codes exactly as they would come out.

The PNG uses DejaVu Sans Mono, which ships inside python-barcode (a python-escpos dependency),
so it renders Cyrillic on any machine without system fonts.
"""

from __future__ import annotations

import contextlib
import importlib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tillpoint.printer.decode import Barcode, Cut, Document, Feed, Image, Line, QRCode

__all__ = ["render_png", "render_text"]


def _place(text: str, align: str, columns: int) -> str:
    if align == "center":
        return text.center(columns).rstrip()
    if align == "right":
        return text.rjust(columns)
    return text


def _visible(items: list[Any]) -> list[Any]:
    """Drop the paper feed that precedes a cut (it only moves the print past the cutter)."""
    out: list[Any] = []
    for k, item in enumerate(items):
        if isinstance(item, Feed) and k + 1 < len(items) and isinstance(items[k + 1], Cut):
            continue
        out.append(item)
    return out


def render_text(doc: Document, columns: int = 48) -> str:
    """A plain-text picture of the paper, ``columns`` wide, codes shown in brackets."""
    rows: list[str] = []
    for item in _visible(doc.items):
        if isinstance(item, Line):
            width = sum(len(s.text) * (2 if s.wide else 1) for s in item.spans)
            text = item.text
            if width > len(text):  # double-width text occupies two columns per letter
                text = " ".join(text)
            rows.append(_place(text, item.align, columns))
        elif isinstance(item, QRCode):
            rows.append(_place(f"[QR: {item.data}]", "center", columns))
        elif isinstance(item, Barcode):
            rows.append(_place(f"[{item.symbology}: {item.data}]", "center", columns))
        elif isinstance(item, Image):
            rows.append(_place(f"[image {item.width}x{item.height}]", "center", columns))
        elif isinstance(item, Feed):
            rows.extend([""] * min(item.lines, 3))
        elif isinstance(item, Cut):
            label = " отрез " if not item.partial else " надрез "
            rows.append(label.center(columns, "-"))
    if not doc.complete:
        rows.append(" не отрезано: печать прервана ".center(columns, "~"))
    return "\n".join(rows) + "\n"


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    candidates: list[Path] = []
    with contextlib.suppress(ModuleNotFoundError, TypeError):  # python-barcode is a dependency
        candidates.append(Path(str(resources.files("barcode") / "fonts" / "DejaVuSansMono.ttf")))
    candidates.append(Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"))
    for path in candidates:
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)  # pragma: no cover


def _image_of_raster(item: Image) -> Any:
    from PIL import Image as PILImage

    img = PILImage.frombytes("1", (item.width, item.height), item.raster)
    return PILImage.eval(img.convert("L"), lambda v: 255 - v)  # ESC/POS: 1 = black


def _qr_image(data: str, module_px: int) -> Any:
    qrcode: Any = importlib.import_module("qrcode")  # no type stubs

    qr = qrcode.QRCode(box_size=max(1, module_px), border=2)
    qr.add_data(data)
    qr.make(fit=True)
    return qr.make_image().get_image().convert("L")


def _barcode_image(data: str, height: int) -> Any:
    from PIL import Image as PILImage

    barcode: Any = importlib.import_module("barcode")  # python-barcode: no type stubs
    writer: Any = importlib.import_module("barcode.writer")
    code = barcode.Code128(data, writer=writer.ImageWriter())
    img = code.render(
        writer_options={
            "module_width": 0.25,
            "module_height": 8.0,
            "quiet_zone": 2.0,
            "write_text": False,
            "dpi": 203,
        }
    )
    if not isinstance(img, PILImage.Image):  # pragma: no cover
        raise TypeError("python-barcode did not return an image")
    return img.convert("L").resize((img.width, height))


def render_png(
    doc: Document, path: Path | None = None, *, width_px: int = 576, columns: int = 48
) -> Any:
    """Draw the document as paper of ``width_px`` dots; save it to ``path`` when given.

    Returns the Pillow image.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    margin = 16
    cell = max(6, width_px // columns)
    font = _font(int(cell / 0.6))
    line_h = int(cell / 0.6 * 1.25)
    paper_w = width_px + 2 * margin
    pieces: list[tuple[Any, str]] = []  # (image, align)
    for item in _visible(doc.items):
        if isinstance(item, Line):
            tall = item.tall
            img = PILImage.new("L", (width_px, line_h), 255)
            draw = ImageDraw.Draw(img)
            x = 0
            for span in item.spans:
                w = cell * (2 if span.wide else 1)
                for ch in span.text:
                    draw.text(
                        (x, 0), ch, font=font, fill=0, stroke_width=1 if span.bold else 0,
                        stroke_fill=0,
                    )  # fmt: skip
                    x += w
            used = min(x, width_px)
            img = img.crop((0, 0, max(1, used), line_h))
            if tall:
                img = img.resize((img.width, line_h * 2))
            pieces.append((img, item.align))
        elif isinstance(item, QRCode):
            pieces.append((_qr_image(item.data, item.module_px), "center"))
        elif isinstance(item, Barcode):
            try:
                img = _barcode_image(item.data, 64)
            except Exception:  # a symbology we do not draw: show its text
                img = PILImage.new("L", (width_px, line_h), 255)
                ImageDraw.Draw(img).text((0, 0), f"[{item.symbology}]", font=font, fill=0)
            if img.width > width_px:
                img = img.resize((width_px, img.height))
            pieces.append((img, "center"))
        elif isinstance(item, Image):
            pieces.append((_image_of_raster(item), "center"))
        elif isinstance(item, Feed):
            pieces.append((PILImage.new("L", (1, line_h * min(item.lines, 3)), 255), "left"))
        elif isinstance(item, Cut):
            cut = PILImage.new("L", (paper_w, line_h), 255)
            d = ImageDraw.Draw(cut)
            for x in range(0, paper_w, 12):
                d.line((x, line_h // 2, x + 6, line_h // 2), fill=0, width=2)
            pieces.append((cut, "cut"))
    height = margin * 2 + sum(img.height + 4 for img, _ in pieces)
    paper = PILImage.new("L", (paper_w, max(height, 2 * margin)), 255)
    y = margin
    for img, align in pieces:
        if align == "cut":
            x = 0
        elif align == "center":
            x = margin + max(0, (width_px - img.width) // 2)
        elif align == "right":
            x = margin + max(0, width_px - img.width)
        else:
            x = margin
        paper.paste(img, (x, y))
        y += img.height + 4
    if path is not None:
        from tillpoint.agent.files import replacing

        with replacing(path) as out:  # written whole: a failed save leaves the old file
            paper.save(out, format="PNG")
    return paper
