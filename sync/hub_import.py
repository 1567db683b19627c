"""Reading master data for `tillpoint hub import`: snapshot-shaped JSON, or JSON Lines.

A JSON file has the snapshot's shape (the contract §3): ``program``, ``products``,
``categories``, ``customers``, ``cards``, ``offers`` and ``removed``. The snapshot header
fields (``version``, ``baseVersion``, ``issuedAt``, ``expiresAt``, ``appliedThrough``) are
the hub's to set and are ignored.

A JSON Lines file (``.jsonl``/``.ndjson``, or ``--format jsonl``) has one object per line,
with one key naming what the line holds::

    {"program": {...}}
    {"product": {"sku": "4601234000017", "name": "...", "category": "dairy"}}
    {"customer": {"id": "c-1", "balancePoints": 1200, ...}}
    {"card": {"number": "2770000000017", "customerId": "c-1"}}
    {"removed": {"cards": ["2770000000024"]}}

A JSON Lines snapshot (``tillpoint.snapshot/jsonl``: a header line, then
``{"section": "customers"}`` lines each followed by that section's rows, as
``bench/generate.py`` writes and as hubs send) is read the same way. JSON Lines are read
line by line, so they suit files too large to hold in memory. Every row is
validated with the same models the till uses; a bad row is reported with its line (or
section and index) and the whole import is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ValidationError
from tillpoint.agent.errors import InputError
from tillpoint.agent.identify import ean13_ok, normalise
from tillpoint.agent.models import (
    CardRecord,
    Category,
    Coupon,
    Customer,
    Model,
    Offer,
    Product,
    Program,
    describe,
)

from .hub_store import ImportRow, RowProblem

Progress = Callable[[int, int], None]  # (done, total) in bytes

MODELS: dict[str, type[Model]] = {
    "program": Program,
    "product": Product,
    "category": Category,
    "customer": Customer,
    "card": CardRecord,
    "offer": Offer,
    "coupon": Coupon,
}
PLURAL = {
    "products": "product",
    "categories": "category",
    "customers": "customer",
    "cards": "card",
    "offers": "offer",
    "coupons": "coupon",
}
IGNORED_HEADER = ("version", "baseVersion", "issuedAt", "expiresAt", "appliedThrough")
SNAPSHOT_JSONL = "tillpoint.snapshot/jsonl"


class _Fraction(ValueError):
    pass


def _no_float(text: str) -> Any:
    raise _Fraction(f"the number {text} has a fraction: use minor units or decimal strings")


# The field that keys each kind's rows (models forbid extra fields, so it is the class's).
KEY_FIELD = {
    kind: next((a for a in ("sku", "code", "id", "number") if a in model.model_fields), "")
    for kind, model in MODELS.items()
}
_DECODER = json.JSONDecoder(parse_float=_no_float)  # one, not one a line


def _key(kind: str, row: BaseModel) -> str:
    if kind == "program":
        return ""
    return str(getattr(row, KEY_FIELD[kind]))


def validate_row(kind: str, data: Any, where: str) -> ImportRow | RowProblem:
    model = MODELS[kind]
    if not isinstance(data, dict):
        return RowProblem(where, "expected a JSON object")
    try:
        row = model.model_validate(data)
    except ValidationError as exc:
        return RowProblem(where, describe(exc))
    if isinstance(row, CardRecord):
        problem = _card_problem(row.number)
        if problem:
            return RowProblem(where, problem)
    doc = row.model_dump(mode="json", by_alias=True, exclude_none=True)
    return ImportRow(kind, _key(kind, row), doc, where)


def _card_problem(number: str) -> str | None:
    if normalise(number) != number or not number.isdigit():
        return f"card number {number!r} must be digits only (as a till reads it)"
    if len(number) == 13 and not ean13_ok(number):
        return f"card number {number} has a wrong EAN-13 check digit: tills would refuse it"
    return None


def _removed(data: Any, where: str) -> Iterator[ImportRow | RowProblem]:
    if not isinstance(data, dict):
        yield RowProblem(where, "expected an object of key lists")
        return
    for section, keys in data.items():
        kind = PLURAL.get(section)
        if kind is None:
            yield RowProblem(f"{where}.{section}", "is not a known section")
            continue
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            yield RowProblem(f"{where}.{section}", "expected a list of keys")
            continue
        for i, key in enumerate(keys):
            yield ImportRow(kind, key, None, f"{where}.{section}[{i}]")


def read_json(
    stream: IO[bytes], total: int, progress: Progress | None
) -> Iterator[ImportRow | RowProblem]:
    """A snapshot-shaped JSON document (read whole)."""
    raw = stream.read()
    try:
        doc = json.loads(raw.decode("utf-8"), parse_float=_no_float)
    except _Fraction as exc:
        raise InputError(f"import: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"import: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError("import: expected a JSON object with the snapshot's sections")
    unknown = set(doc) - {"program", "removed", *PLURAL, *IGNORED_HEADER}
    if unknown:
        raise InputError(f"import: {sorted(unknown)[0]} is not a known section")
    rows = sum(len(v) for k, v in doc.items() if k in PLURAL and isinstance(v, list))
    rows = max(rows, 1)
    done = 0
    if "program" in doc:
        yield validate_row("program", doc["program"], "program")
    for section, kind in PLURAL.items():
        values = doc.get(section, [])
        if not isinstance(values, list):
            yield RowProblem(section, "expected a list")
            continue
        for i, data in enumerate(values):
            yield validate_row(kind, data, f"{section}[{i}]")
            done += 1
            if progress is not None and done % 1000 == 0:
                progress(total * done // rows, total)
    if "removed" in doc:
        yield from _removed(doc["removed"], "removed")
    if progress is not None:
        progress(total, total)


def read_jsonl(
    stream: IO[bytes], total: int, progress: Progress | None
) -> Iterator[ImportRow | RowProblem]:
    """One `{"<kind>": {...}}` object per line, or a JSON Lines snapshot; streamed."""
    done = 0
    section: str | None = None  # in a `tillpoint.snapshot/jsonl` stream: the current kind
    snapshot_stream = False
    for number, line in enumerate(stream, start=1):
        done += len(line)
        if progress is not None and number % 1000 == 0:
            progress(done, total)
        text = line.strip()
        if not text:
            continue
        where = f"line {number}"
        try:
            item = _DECODER.decode(text.decode("utf-8"))
        except _Fraction as exc:
            yield RowProblem(where, str(exc))
            continue
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield RowProblem(where, f"not valid JSON ({exc.args[0] if exc.args else exc})")
            continue
        if not isinstance(item, dict):
            yield RowProblem(where, "expected a JSON object")
            continue
        if not snapshot_stream and not done - len(line) and item.get("format") == SNAPSHOT_JSONL:
            snapshot_stream = True  # the header line of a JSON Lines snapshot
            if "program" in item:
                yield validate_row("program", item["program"], f"{where} program")
            if "removed" in item:
                yield from _removed(item["removed"], f"{where} removed")
            continue
        if snapshot_stream:
            if set(item) == {"section"}:
                section = PLURAL.get(str(item["section"]))
                if section is None:
                    yield RowProblem(where, f"unknown section {item['section']!r}")
                continue
            if section is None:
                yield RowProblem(where, 'a row before any {"section": ...} line')
                continue
            yield validate_row(section, item, where)
            continue
        if len(item) != 1:
            yield RowProblem(where, 'expected one object like {"customer": {...}}')
            continue
        ((name, data),) = item.items()
        if name == "removed":
            yield from _removed(data, where)
        elif name in MODELS:
            yield validate_row(name, data, where)
        elif name in PLURAL:
            yield RowProblem(where, f'write one row per line as {{"{PLURAL[name]}": {{...}}}}')
        else:
            yield RowProblem(where, f"{name!r} is not a known kind of row")
    if progress is not None:
        progress(total, total)


def read_file(
    path: Path, fmt: str | None = None, progress: Progress | None = None
) -> Iterator[ImportRow | RowProblem]:
    """The rows of an import file; `fmt` is "json", "jsonl" or None (from the name)."""
    if fmt is None:
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "json"
    if fmt not in ("json", "jsonl"):
        raise InputError(f"unknown import format {fmt!r}: json or jsonl")
    try:
        total = path.stat().st_size
        stream = path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None

    def rows() -> Iterator[ImportRow | RowProblem]:
        with stream:
            reader = read_jsonl if fmt == "jsonl" else read_json
            yield from reader(stream, total, progress)

    return rows()
