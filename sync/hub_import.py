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

import contextlib
import fcntl
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import SchemaSerializer, SchemaValidator
from tillpoint.agent import limits
from tillpoint.agent.advice import whole_number_advice
from tillpoint.agent.errors import InputError
from tillpoint.agent.identify import ascii_digits, ean13_ok, normalise
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
    fits_int64,
    float_place,
    normal_coupon_code,
    without_nulls,
)
from tillpoint.agent.snapshot_stream import HEAD_BYTES, refuse_non_object

from .hub_rules import canon
from .hub_store import SECTIONS, ImportRow, RowProblem

log = logging.getLogger("tillpoint.hub")

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
# The program's int64 figures a till's model reads as decimals: the hub takes whole
# numbers only and writes them as JSON numbers, as every other int64 of the program.
WHOLE_PROGRAM_FIGURES = ("max_redeem_percent", "birthday_multiplier")
IGNORED_HEADER = ("version", "baseVersion", "issuedAt", "expiresAt", "appliedThrough")
SNAPSHOT_JSONL = "tillpoint.snapshot/jsonl"
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark: skipped, as in every JSON input


class _Fraction(ValueError):
    pass


class _Twice(ValueError):
    pass


def _sections(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of a JSON import; a section (or a `removed` list) named twice is refused:
    the reader kept the last one, and the rows of the first were silently not imported."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen and (key in SECTIONS or key in ("program", "removed")):
                raise _Twice(f"{key} is given twice in one object: merge them into one")
            seen.add(key)
    return doc


def _no_float(text: str) -> Any:
    raise _Fraction(f"the number {text} has a fraction: use minor units or decimal strings")


def _fraction(exc: _Fraction, text: str) -> str:
    """`exc` said with the field its number is in and that field's rule (a JSON text of
    thousands of numbers: which one?). `maxRedeemPercent: 1.5` was told "use minor units"
    and no field (review 39, rev38k): a percent is not money."""

    place = float_place(text)
    if not place:
        return str(exc)
    whole = {f"program.{Program.model_fields[n].alias or n}" for n in WHOLE_PROGRAM_FIGURES}
    number = str(exc).split(" ")[2]
    advice = whole_number_advice(place, decimals=place not in whole)
    return f"{place}: the number {number} has a fraction: {advice}"


# The field that keys each kind's rows (models forbid extra fields, so it is the class's).
KEY_FIELD = {
    kind: next((a for a in ("sku", "code", "id", "number") if a in model.model_fields), "")
    for kind, model in MODELS.items()
}
_DECODER = json.JSONDecoder(parse_float=_no_float)  # one, not one a line


def _beyond_json(exc: Exception) -> str:
    """What Python's reader cannot take of a JSON text, in the words every other input
    of tillpoint uses (agent/cli.py's parse_json): nesting past its recursion limit, or
    an integer past its 4,300 digits. They were "internal error", exit 1."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return "a number with too many digits"


def _key(kind: str, row: BaseModel) -> str:
    if kind == "program":
        return ""
    return str(getattr(row, KEY_FIELD[kind]))


def validate_row(kind: str, data: Any, where: str) -> ImportRow | RowProblem:
    model = MODELS[kind]
    if not isinstance(data, dict):
        return RowProblem(where, "expected a JSON object")
    try:
        row = model.model_validate(without_nulls(data))  # null: the field left out
    except ValidationError as exc:
        said = describe(exc)
        if kind == "program":  # the hub's whole figures: "7.5" would be refused next
            for name in WHOLE_PROGRAM_FIGURES:
                field = Program.model_fields[name].alias or name
                said = said.replace(
                    f'{field} must be a decimal string such as "7.5"',
                    f'{field} must be a whole number such as "30"',
                )
        return RowProblem(where, said)
    if isinstance(row, Program) and row.repeated_tier() is not None:
        return RowProblem(where, f"tier {row.repeated_tier()!r} appears twice")
    if isinstance(row, Program):
        for name in WHOLE_PROGRAM_FIGURES:
            value = getattr(row, name)
            if value != value.to_integral_value():
                field = Program.model_fields[name].alias or name
                return RowProblem(where, f"{field} must be a whole number (got {value})")
    if isinstance(row, CardRecord):
        problem = _card_problem(row.number)
        if problem:
            return RowProblem(where, problem)
    if isinstance(row, Customer):
        problem = _points_problem(row)
        if problem:
            return RowProblem(where, problem)
    # Defaults are left out (a till reads an absent field as its default): every offer
    # carried six default fields and every customer `"pending":[]`, a snapshot 30 % larger.
    # The program keeps every value the retailer gave: its defaults are business figures
    # (redemption cap, offline limit, hold time) that a later release might change.
    doc = row.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude_defaults=kind != "program"
    )
    if kind == "customer":
        doc.setdefault("balancePoints", 0)  # a snapshot's customer always says its points
    elif kind == "program":  # int64 (the proto's Program), read as decimals by a till
        for name in WHOLE_PROGRAM_FIGURES:
            doc[Program.model_fields[name].alias or name] = int(getattr(row, name))
    return ImportRow(kind, _key(kind, row), doc, where)


def _points_problem(row: Customer) -> str | None:
    """Each figure fits in int64 (the model checks), but the hub adds them up: a pending
    part that becomes active joins `balancePoints`, parts due at the same moment are served
    as one, and a till sums the expiring parts. A row whose sums do not fit would be served
    to every till, and every till would refuse that snapshot."""
    if not row.pending and not row.expiring:  # most rows: `balancePoints` alone fits
        return None
    # any of the parts may join the balance, in any order: the highest and the lowest
    # sums they can make must fit
    ups = sum(part.points for part in row.pending if part.points > 0)
    downs = sum(part.points for part in row.pending if part.points < 0)
    if not (fits_int64(row.balance_points + ups) and fits_int64(row.balance_points + downs)):
        return (
            f"customer {row.id}: balancePoints and the pending points add up past a signed"
            " 64-bit integer"
        )
    if sum(part.points for part in row.expiring) > limits.INT64_MAX:
        return f"customer {row.id}: the expiring points add up past a signed 64-bit integer"
    return None


def _card_problem(number: str) -> str | None:
    if normalise(number) != number or not ascii_digits(number):
        return f"card number {number!r} must be digits only (as a till reads it)"
    if len(number) == 13 and not ean13_ok(number):
        return f"card number {number} has a wrong EAN-13 check digit: tills would refuse it"
    return None


def _removed(data: Any, where: str) -> Iterator[ImportRow | RowProblem]:
    if not isinstance(data, dict):
        yield RowProblem(where, "expected an object of key lists")
        return
    for section, keys in data.items():
        if keys is None:  # null: the list left out
            continue
        kind = SECTIONS.get(section)
        if kind is None:
            yield RowProblem(f"{where}.{section}", "is not a known section")
            continue
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            yield RowProblem(f"{where}.{section}", "expected a list of keys")
            continue
        for i, key in enumerate(keys):
            if kind == "coupon":  # stored under its normal form (models.Coupon)
                try:
                    key = normal_coupon_code(key)
                except ValueError as exc:
                    yield RowProblem(f"{where}.{section}[{i}]", str(exc))
                    continue
            yield ImportRow(kind, key, None, f"{where}.{section}[{i}]")


def read_json(
    stream: IO[bytes], total: int, progress: Progress | None
) -> Iterator[ImportRow | RowProblem]:
    """A snapshot-shaped JSON document (read whole, once its first bytes could start one)."""
    head = stream.read(HEAD_BYTES)
    refuse_non_object(head, "import", "an import file")
    raw = (head + stream.read()).removeprefix(BOM)  # Windows tools write one
    try:
        doc = json.loads(raw.decode("utf-8"), parse_float=_no_float, object_pairs_hook=_sections)
    except _Fraction as exc:
        raise InputError(f"import: {_fraction(exc, raw.decode('utf-8'))}") from None
    except _Twice as exc:
        raise InputError(f"import: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        hint = _jsonl_hint(raw) if isinstance(exc, json.JSONDecodeError) else ""
        raise InputError(f"import: not valid JSON ({_not_json(exc)}){hint}") from None
    except (RecursionError, ValueError) as exc:
        raise InputError(f"import: not valid JSON ({_beyond_json(exc)})") from None
    if not isinstance(doc, dict):
        raise InputError("import: expected a JSON object with the snapshot's sections")
    doc = {k: v for k, v in doc.items() if v is not None}  # null: the section left out
    fmt = doc.get("format")
    if isinstance(fmt, str) and fmt.startswith(
        ("tillpoint-signed-snapshot/", "tillpoint-enrollment/")
    ):
        what = (
            "a signed snapshot (what 'hub export' writes for 'snapshot load')"
            if fmt.startswith("tillpoint-signed")
            else "an enrolment bundle (a till's secret: keep it for 'sync install')"
        )
        raise InputError(f"import: the file is {what}, not master data")
    unknown = set(doc) - {"program", "removed", *SECTIONS, *IGNORED_HEADER}
    if unknown:
        hint = _jsonl_hint(raw) if len(doc) == 1 else ""
        raise InputError(f"import: {sorted(unknown)[0]} is not a known section{hint}")
    rows = sum(len(v) for k, v in doc.items() if k in SECTIONS and isinstance(v, list))
    rows = max(rows, 1)
    done = 0
    if "program" in doc:
        yield validate_row("program", doc["program"], "program")
    for section, kind in SECTIONS.items():
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


def _jsonl_hint(raw: bytes) -> str:
    """What to say after a JSON document's refusal when the text is JSON Lines (its first
    line a header or a row, `sniff_format`'s test): a file whose name does not say so
    (`hub import /dev/stdin`, `rows.txt`) is read as one document, and "Extra data at line
    2 column 1" alone did not say that `--format jsonl` reads it (review 42, polish42).
    The first line is found as `hub import -` finds it (`_first_line`, within
    `ROW_MAX_BYTES`)."""
    if sniff_format(_first_line(io.BytesIO(raw), ROW_MAX_BYTES)) != "jsonl":
        return ""
    return "; the text is JSON Lines (one row a line): give --format jsonl, or name it .jsonl"


def _not_json(exc: UnicodeDecodeError | json.JSONDecodeError, line: int | None = None) -> str:
    """What is wrong, in the words the agent's reader uses (`cli.parse_json`): "not UTF-8
    text" (not the codec's "'utf-8' codec can't decode byte 0xe9 in position 23", nor, on
    a JSON Lines line, its bare name "utf-8"), "… at line L column C" (not json's
    "(char N)"); `line`: the file's line a JSON Lines row was read from."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return f"{exc.msg.removesuffix(' at')} at line {line or exc.lineno} column {exc.colno}"


State = tuple[bool, str | None]  # (a JSON Lines snapshot?, its current section's kind)
PARALLEL_WORKERS = 1  # the reading processes by default (see read_jsonl)
CHUNK_LINES = 2000

# A JSON Lines line (a row, or a snapshot's header) longer than this is refused, naming
# it, before it is read whole: a line had no bound, and a 300 MB one (a file that is not
# JSON Lines, a producer that lost its newlines) took 650 MB (review 40, rev40f; review 42,
# polish42). 16 times a POS request's 4 MiB (`limits.REQUEST_MAX_BYTES`): an offer naming
# four million SKUs, or a header's `appliedThrough` of 500,000 tills, still fits.
# The till's `snapshot load` has the same bound (`limits.LINE_MAX_BYTES`, review 42, left42).
ROW_MAX_BYTES = limits.LINE_MAX_BYTES


def _line_too_long(number: int) -> InputError:
    return InputError(
        f"import refused, nothing was imported: line {number} is longer than"
        f" {ROW_MAX_BYTES >> 20} MiB (one row a line: is the file JSON Lines?)"
    )


def _bounded_lines(stream: IO[bytes], number: int, count: int | None = None) -> list[bytes]:
    """Up to `count` lines of `stream` (each with its newline; `CHUNK_LINES`, read at each
    call: a default argument's, fixed at import, left the tests that set it small reading
    one chunk, review 58, mut58b), the first being line `number` of the file, none read
    past `ROW_MAX_BYTES` (InputError naming it)."""
    read = limits.bounded_lines(stream.readline, _line_too_long, number, bound=ROW_MAX_BYTES)
    return list(islice(read, CHUNK_LINES if count is None else count))


def _line_rows(
    number: int, line: bytes, state: State, first: bool
) -> tuple[list[ImportRow | RowProblem], State]:
    """The rows of one line, and the reading state after it (`first`: the file's first
    line, where a JSON Lines snapshot's header is)."""
    snapshot_stream, section = state
    text = line.strip()
    if not text:
        return [], state
    where = f"line {number}"
    try:
        item = _DECODER.decode(text.decode("utf-8"))
    except _Fraction as exc:
        return [RowProblem(where, _fraction(exc, text.decode("utf-8")))], state
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [RowProblem(where, f"not valid JSON ({_not_json(exc, number)})")], state
    except (RecursionError, ValueError) as exc:
        return [RowProblem(where, f"not valid JSON ({_beyond_json(exc)})")], state
    if not isinstance(item, dict):
        return [RowProblem(where, "expected a JSON object")], state
    if not snapshot_stream and first and item.get("format") == SNAPSHOT_JSONL:
        out: list[ImportRow | RowProblem] = []  # the header line of a JSON Lines snapshot
        if "program" in item:
            out.append(validate_row("program", item["program"], f"{where} program"))
        if "removed" in item:
            out.extend(_removed(item["removed"], f"{where} removed"))
        return out, (True, section)
    if snapshot_stream:
        if set(item) == {"section"}:
            kind = SECTIONS.get(str(item["section"]))
            if kind is None:
                return [RowProblem(where, f"unknown section {item['section']!r}")], (True, None)
            return [], (True, kind)
        if section is None:
            return [RowProblem(where, 'a row before any {"section": ...} line')], state
        return [validate_row(section, item, where)], state
    if len(item) != 1:
        return [RowProblem(where, 'expected one object like {"customer": {...}}')], state
    ((name, data),) = item.items()
    if name == "removed":
        return list(_removed(data, where)), state
    if name in MODELS:
        return [validate_row(name, data, where)], state
    if name in SECTIONS:
        return [
            RowProblem(where, f'write one row per line as {{"{SECTIONS[name]}": {{...}}}}')
        ], state
    return [RowProblem(where, f"{name!r} is not a known kind of row")], state


def read_jsonl(
    stream: IO[bytes], total: int, progress: Progress | None, workers: int | None = None
) -> Iterator[ImportRow | RowProblem]:
    """One `{"<kind>": {...}}` object per line, or a JSON Lines snapshot; streamed, in
    chunks of lines. `workers` > 1 parses and validates the chunks in that many processes,
    the rows coming out in the file's order; the default is one process (since the bulk
    path, the processes no longer pay: sending the rows back costs more than they save,
    docs/PERFORMANCE.md)."""
    yield from _read_chunks(stream, total, progress, workers, _chunk_rows, list)


def _read_chunks(
    stream: IO[bytes],
    total: int,
    progress: Progress | None,
    workers: int | None,
    chunk: Callable[[Job], tuple[list[Any], State]],
    first_line: Callable[[list[ImportRow | RowProblem]], list[Any]],
) -> Iterator[Any]:
    """`read_jsonl`'s reading, of `chunk`'s results (rows, or blocks of them): `chunk`
    reads the chunks of lines after the first (in `workers` processes when > 1),
    `first_line` makes its results of the first line's rows."""
    if workers is None:
        workers = PARALLEL_WORKERS
    state: State = (False, None)
    first = stream.readline(HEAD_BYTES)  # the header of a snapshot, or a first row
    refuse_non_object(first, "import", "an import file")
    if first and not first.endswith(b"\n"):  # a long first line: the rest of it
        rest = limits.bounded_lines(stream.readline, _line_too_long, 1, first, ROW_MAX_BYTES)
        first = next(rest)
    done = len(first)
    first = first.removeprefix(BOM)  # Windows tools write one
    if first:
        rows, state = _line_rows(1, first, state, True)
        yield from first_line(rows)
    if workers > 1 and multiprocessing.parent_process() is None:  # never from a worker
        yield from _read_jsonl_parallel(stream, total, progress, workers, state, done, chunk)
        return
    number = 2
    while lines := _bounded_lines(stream, number):
        found, state = chunk((number, lines, state))
        number += len(lines)
        done += sum(map(len, lines))
        if progress is not None:
            progress(done, total)
        yield from found
    if progress is not None:
        progress(total, total)


Job = tuple[int, list[bytes], State]  # the lines from number job[0] on, read from job[2]


def _chunk_rows(job: Job) -> tuple[list[ImportRow | RowProblem], State]:
    """A chunk's rows (`_chunk`, its runs read by `_bulk_rows`)."""
    return _chunk(job, _bulk_rows)


def _chunk(
    job: Job, bulk_run: Callable[[Bulk, int, list[bytes]], list[Any] | None]
) -> tuple[list[Any], State]:
    """A chunk's rows (in a worker process, or the reading one): the lines from number
    `job[0]` on, read from the state `job[2]`; and the state after them. The rows carry
    their canonical text only (`doc` None: less to send between processes).

    A run of a JSON Lines snapshot section's rows is validated in one call (`bulk_run`);
    a run it refuses, and every other line, is read line by line (`_line_rows`), which
    finds each problem, its line and its field."""
    number, lines, state = job
    out: list[Any] = []
    i = 0
    while i < len(lines):
        bulk = BULK.get(state[1] or "") if state[0] else None
        end = i
        if bulk is not None:
            if b'"section"' not in b"".join(lines[i:]):
                end = len(lines)
            while end < len(lines) and b'"section"' not in lines[end]:
                end += 1
            rows = bulk_run(bulk, number + i, lines[i:end]) if end > i else None
            if rows is not None:
                out.extend(rows)
                i = end
                continue
        for n in range(i, max(end, i + 1)):
            found, state = _line_rows(number + n, lines[n], state, False)
            for row in found:
                if isinstance(row, ImportRow) and row.doc is not None:  # the text made here
                    row = ImportRow(row.kind, row.key, None, row.where, canon(row.doc))
                out.append(row)
        i = max(end, i + 1)
    return out, state


# ---------------------------------------------------------------- the bulk path
# Pydantic-core validates a run of lines as one JSON array (no Python dict a row, no
# Python call a field) and writes each row's canonical text itself. Canonical text has
# its keys sorted, and pydantic-core writes a model's fields in the order it validated
# them: so the bulk validators are the models' own core schemas with every model's fields
# in sorted alias order, building shadow subclasses of the models (pydantic-core would
# otherwise reuse the classes' own prebuilt validators, in declaration order), and every
# int and bool strict (a JSON number with a fraction is refused by every field, as the
# line-by-line path refuses it; a lax value goes to that path, which takes it); a time
# is parsed natively when it is spelled as `models.RFC3339_NATIVE` says (the models' own first
# choice). The rows are the same as the line-by-line path's (a test compares them, and
# `_bulk_checked` does at start-up: a mismatch, say under another pydantic, turns the
# bulk path off).


class Bulk:
    def __init__(self, kind: str) -> None:
        shadows: dict[type, type] = {}

        def shadow(cls: type) -> type:
            if cls not in shadows:
                sub = type(cls.__name__, (cls,), {"__module__": __name__})
                sub.__pydantic_complete__ = False  # type: ignore[attr-defined]
                shadows[cls] = sub
            return shadows[cls]

        def sort(schema: Any) -> Any:
            if isinstance(schema, list):
                return [sort(item) for item in schema]
            if not isinstance(schema, dict):
                return schema
            out = {k: sort(v) for k, v in schema.items()}
            if out.get("type") == "model-fields":
                fields = out["fields"].items()
                out["fields"] = dict(sorted(fields, key=lambda f: f[1]["serialization_alias"]))
            elif out.get("type") == "model":
                out["cls"] = shadow(out["cls"])
            elif out.get("type") in ("int", "bool", "float"):
                out["strict"] = True  # never a JSON number with a fraction, as `_no_float`
            return out

        model = MODELS[kind]
        model.model_rebuild()  # built at first use (`models.Model`'s defer_build)
        schema = sort(model.__pydantic_core_schema__)
        self.kind = kind
        self.key_field = KEY_FIELD[kind]
        self.validate = SchemaValidator({"type": "list", "items_schema": schema}).validate_json
        self.text = SchemaSerializer(schema).to_json


def _bulk_rows(bulk: Bulk, number: int, lines: list[bytes]) -> list[ImportRow] | None:
    """The rows of lines `number`… of a section, validated in one call; None when any of
    them is not a good row, for the line-by-line path to say why."""
    numbered = [(n, line) for n, line in enumerate(lines, start=number) if not line.isspace()]
    if not numbered:
        return []
    found = _bulk_texts(bulk, [line for _, line in numbered])
    if found is None:
        return None
    keys, texts = found
    return [
        ImportRow(bulk.kind, key, None, f"line {n}", text.decode())
        for (n, _), key, text in zip(numbered, keys, texts, strict=True)
    ]


def _bulk_texts(bulk: Bulk, good: list[bytes]) -> tuple[list[str], list[bytes]] | None:
    """(keys, canonical texts) of a run's lines (none blank), validated in one call; None
    when any of them is not a good row. The texts are the bytes pydantic-core wrote."""
    try:
        models = bulk.validate(b"[" + b",".join(good) + b"]")
    except ValidationError:
        return None
    if len(models) != len(good):  # a line held two objects: the lines will say
        return None
    keys = [getattr(model, bulk.key_field) for model in models]
    if bulk.kind == "card" and any(map(_card_problem, keys)):
        return None
    if bulk.kind == "customer" and any(map(_points_problem, models)):
        return None
    text = bulk.text
    texts = [text(m, by_alias=True, exclude_none=True, exclude_defaults=True) for m in models]
    if bulk.kind == "customer":  # its points always said: the first key in sorted order
        texts = [
            t if t.startswith(b'{"balancePoints":') else b'{"balancePoints":0,' + t[1:]
            for t in texts
        ]
    return keys, texts


_PROBES: dict[str, list[dict[str, Any]]] = {
    "product": [{"sku": "4601234000017", "name": 'Молоко "3,2%"\n', "category": "dairy"}],
    "category": [{"code": "dairy", "parent": "food"}, {"code": "food", "name": "Еда"}],
    "customer": [
        {
            "id": "c-1",
            "firstName": "Анна",
            "birthday": "1990-02-03",
            "balancePoints": 120,
            "controlGroups": ["g"],
            "pending": [{"points": 5, "activatesAt": "2026-11-23T10:15:00+03:00"}],
            "expiring": [{"points": 7, "expiresAt": "2026-12-01T00:00:00Z"}],
        }
    ],
    "card": [{"number": "2770000000017", "customerId": "c-1"}],
    "offer": [
        {
            "id": "o-1",
            "kind": "QUANTITY_PRICE",
            "skus": ["4601234000017"],
            "tiers": [{"minQty": "2", "unitPriceMinor": 900}],
            "hours": [{"from": "09:00", "to": "18:30"}],
            "weekdays": [1, 5],
            "validFrom": "2026-11-01T00:00:00+03:00",
            "validTo": "2026-12-31T23:59:59.5+00:00",
        },
        {"id": "o-2", "kind": "MULTIBUY", "buyQty": "2", "freeQty": "1", "value": 0},
        {"id": "o-3", "kind": "PERCENT_OFF", "value": "12.5", "minQty": "1.250"},
    ],
    "coupon": [{"code": "ab-12 cd", "offerId": "o-1", "validTo": "2026-12-31T23:59:59Z"}],
}


def _bulk_checked() -> dict[str, Bulk]:
    """A Bulk for each kind whose probe rows it reads as the line-by-line path does."""
    out = {}
    for kind, probes in _PROBES.items():
        bulk = Bulk(kind)
        lines = [json.dumps(p, ensure_ascii=False).encode() for p in probes]
        slow = [validate_row(kind, p, f"line {n}") for n, p in enumerate(probes, start=1)]
        want = [(r.key, r.where, canon(r.doc)) for r in slow if isinstance(r, ImportRow)]
        got = [(r.key, r.where, r.text) for r in _bulk_rows(bulk, 1, lines) or []]
        if got == want and len(want) == len(probes):
            out[kind] = bulk
    return out


BULK = _bulk_checked()  # "program" (one row) and JSON Lines of {"<kind>": {...}} go line by line


def _guess(line: bytes, state: State) -> State:
    """The state after a line, as far as the reading process can tell cheaply: a
    `{"section": ...}` line changes it (a chunk read from a wrong guess is read again)."""
    if state[0] and b'"section"' in line and len(line) < 256:
        return _line_rows(0, line, state, False)[1]
    return state


def _read_jsonl_parallel(
    stream: IO[bytes],
    total: int,
    progress: Progress | None,
    workers: int,
    state: State,
    done: int,
    chunk: Callable[[Job], tuple[list[Any], State]] = _chunk_rows,
) -> Iterator[Any]:
    """`read_jsonl`'s lines after the first (read there: `state` after it, `done` bytes),
    each chunk read by `chunk` in a worker."""
    from collections import deque

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: deque[tuple[Any, int, list[bytes], State, int]] = deque()
        guess = state
        number = 2
        read_state = state  # the true state where the next chunk to yield starts

        def settle() -> Iterator[Any]:
            nonlocal read_state, done
            result, start, lines, started, size = pending.popleft()
            if started == read_state:
                rows, read_state = result.get()
            else:  # the guess was wrong: this chunk again, from the true state
                rows, read_state = chunk((start, lines, read_state))
            done += size
            if progress is not None:
                progress(done, total)
            yield from rows

        while True:
            lines = _bounded_lines(stream, number)
            size = sum(map(len, lines))
            if not lines:
                break
            started = guess
            for line in lines:
                guess = _guess(line, guess)
            job = (number, lines, started)
            pending.append((pool.apply_async(chunk, (job,)), number, lines, started, size))
            number += len(lines)
            while len(pending) > workers * 3:
                yield from settle()
        while pending:
            yield from settle()
    if progress is not None:
        progress(total, total)


# ---------------------------------------------------------------- blocks for COPY
# PostgreSQL's fast import takes the rows as blocks of COPY text made where they are
# read: a worker process sends one bytes object a chunk (and its tallies), not a row
# object a row (pickling those back cost more than the workers saved).

_COPY_KEY = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass
class Block:
    """Rows in COPY's text format, a `kind<TAB>key<TAB>doc` line each (a removal's doc
    `\\N`; program rows not among them: `program`, the block's last one, carries it),
    with their tallies. `problem`: a row of the block was refused (the data is then
    incomplete: the import must be read row by row, which names the problems)."""

    data: bytes
    rows: int
    counts: dict[str, int]
    removed: int
    program: tuple[str, str | None] | None
    problem: bool

    @classmethod
    def of(cls, rows: list[ImportRow | RowProblem]) -> Block:
        out: list[str] = []
        counts: dict[str, int] = {}
        removed = 0
        program = None
        for row in rows:
            if isinstance(row, RowProblem):
                return cls(b"", len(rows), {}, 0, None, True)
            text = row.text if row.text is not None else canon(row.doc)
            if text is None:
                removed += 1
            else:
                counts[row.kind] = counts.get(row.kind, 0) + 1
            if row.kind == "program":
                program = (row.key, text)
                continue
            key = row.key.translate(_COPY_KEY)
            if text is None:
                out.append(f"{row.kind}\t{key}\t\\N\n")
            else:  # JSON text holds no tab, newline or CR: only backslashes to double
                doc = text.replace("\\", "\\\\")
                out.append(f"{row.kind}\t{key}\t{doc}\n")
        return cls("".join(out).encode(), len(rows), counts, removed, program, False)


@dataclass
class _CopyRun:
    """A bulk run's rows as COPY text (`_bulk_copy`)."""

    kind: str
    data: bytes
    rows: int


def _bulk_copy(bulk: Bulk, number: int, lines: list[bytes]) -> list[_CopyRun] | None:
    """`_bulk_rows`, made straight into COPY text (no row object a row, the texts kept
    as the bytes pydantic-core wrote); None as there."""
    good = [line for line in lines if not line.isspace()]
    if not good:
        return []
    found = _bulk_texts(bulk, good)
    if found is None:
        return None
    keys, texts = found
    if b"\\" in b"".join(texts):  # JSON text holds no tab, newline or CR
        texts = [t.replace(b"\\", b"\\\\") for t in texts]
    joined = "".join(keys)
    if any(c in joined for c in "\\\t\n\r"):
        keys = [key.translate(_COPY_KEY) for key in keys]
    kind = bulk.kind.encode()
    data = b"".join(
        [b"%s\t%s\t%s\n" % (kind, key.encode(), t) for key, t in zip(keys, texts, strict=True)]
    )
    return [_CopyRun(bulk.kind, data, len(keys))]


def _chunk_blocks(job: Job) -> tuple[list[Block], State]:
    """A chunk as one block: its bulk runs' COPY text as made, its other rows added."""
    found, state = _chunk(job, _bulk_copy)
    runs = [r for r in found if isinstance(r, _CopyRun)]
    if not runs:
        return [Block.of(found)], state
    rest = Block.of([r for r in found if not isinstance(r, _CopyRun)])
    if rest.problem:
        return [rest], state
    parts: list[bytes] = []
    counts = rest.counts
    for item in found:  # in the file's order (program rows are not in the data)
        if isinstance(item, _CopyRun):
            parts.append(item.data)
            counts[item.kind] = counts.get(item.kind, 0) + item.rows
        elif item.kind != "program":
            parts.append(Block.of([item]).data)
    rows = rest.rows + sum(r.rows for r in runs)
    return [Block(b"".join(parts), rows, counts, rest.removed, rest.program, False)], state


def _first_block(rows: list[ImportRow | RowProblem]) -> list[Block]:
    return [Block.of(rows)] if rows else []


# The reading processes of a large file's blocks: one (the importing process) by default.
# Two workers paid only on a nearly idle machine and were 1.1-1.9 x slower whenever other
# work ran (docs/PERFORMANCE.md): PostgreSQL takes the COPY on the other core.
BLOCK_WORKERS = 1
BLOCK_WORKERS_FROM = 16 << 20  # bytes: a smaller file is always read in one process


class ImportFile:
    """The rows of an import file, read each time they are iterated (`read_file`): a
    store may read them twice (PostgreSQL's fast path, when it has to fall back)."""

    def __init__(self, path: Path, fmt: str, total: int, progress: Progress | None) -> None:
        self.path, self.fmt, self.total, self.progress = path, fmt, total, progress

    def _open(self) -> IO[bytes]:
        try:
            return self.path.open("rb")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read it ({exc.strerror})") from None

    def __iter__(self) -> Iterator[ImportRow | RowProblem]:
        with self._open() as stream:
            reader = read_jsonl if self.fmt == "jsonl" else read_json
            yield from reader(stream, self.total, self.progress)

    def copy_blocks(self, workers: int | None = None) -> Iterator[Block]:
        """The rows again, as blocks of COPY text, in the file's order; a JSON Lines file
        of `BLOCK_WORKERS_FROM` bytes or more is read by `BLOCK_WORKERS` processes (when
        more than one)."""
        if workers is None:
            large = self.total >= BLOCK_WORKERS_FROM and (os.cpu_count() or 1) > 1
            workers = BLOCK_WORKERS if large else 1
        with self._open() as stream:
            if self.fmt == "jsonl":
                yield from _read_chunks(
                    stream, self.total, self.progress, workers, _chunk_blocks, _first_block
                )
                return
            yield from blocks_of(read_json(stream, self.total, self.progress))


def blocks_of(rows: Iterable[ImportRow | RowProblem]) -> Iterator[Block]:
    """Rows as blocks of COPY text, `CHUNK_LINES` rows a block, in their order."""
    it = iter(rows)
    while chunk := list(islice(it, CHUNK_LINES)):
        yield Block.of(chunk)


def read_file(path: Path, fmt: str | None = None, progress: Progress | None = None) -> ImportFile:
    """The rows of an import file; `fmt` is "json", "jsonl" or None (from the name). The
    file is checked now and read when the rows are iterated (again on each iteration)."""
    if fmt is None:
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "json"
    if fmt not in ("json", "jsonl"):
        raise InputError(f"unknown import format {fmt!r}: json or jsonl")
    try:
        total = path.stat().st_size
        path.open("rb").close()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
    return ImportFile(path, fmt, total, progress)


# A first line's first key, when it is plainly written (no escape in it).
_FIRST_KEY = re.compile(rb'\{[ \t\r\n]*"([^"\\]*)"')


def sniff_format(first_line: bytes) -> str:
    """The form of an import read from standard input, which has no name to tell it by:
    "jsonl" when its first line is a JSON Lines snapshot's header or, whole on its own, a
    row `{"<kind>": {...}}` (a kind, `program` or `removed`: the last two mean the same in
    either form); else "json" (a document, however it is laid out)."""
    line = first_line.removeprefix(BOM).strip()
    first_key = _FIRST_KEY.match(line)
    key = first_key[1].decode(errors="replace") if first_key else None
    if key in SECTIONS:
        # `{"customers": [...`: a document (`jq -c`'s line), not parsed twice; its rows'
        # text is not looked in for the header's format name, which a header, never
        # begun by a section, holds (the whole line is read now: review 58, rev58)
        return "json"
    if SNAPSHOT_JSONL.encode() in line.replace(b" ", b""):
        return "jsonl"
    if key is not None and key not in (*MODELS, "removed"):
        return "json"  # a document begun by its header's keys (`version`, ...)
    try:
        doc = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "json"
    if isinstance(doc, dict) and len(doc) == 1 and next(iter(doc)) in (*MODELS, "removed"):
        return "jsonl"
    return "json"


def _first_line(stream: IO[bytes], bound: int = HEAD_BYTES) -> bytes:
    """The first line that is not blank (JSON Lines may begin with blank lines, which
    `read_jsonl` skips), within `bound` bytes: `ROW_MAX_BYTES` to tell JSON Lines by it,
    as its first row may be as long as any (`hub import -` read 4 KiB of it, and an
    offer of 400 SKUs first was refused as one JSON document, review 58, mut58b)."""
    left = bound
    line = b""
    while left > 0:
        line = stream.readline(left)
        left -= len(line)
        if not line or line.removeprefix(BOM).strip():
            break
    return line


# The name `hub import -`'s copy of standard input starts with, in the hub's directory.
SPOOL_PREFIX = ".import-stdin-"


def remove_stale_spools(spool_dir: Path) -> int:
    """Remove the copies of standard input a `hub import -` killed by SIGKILL (the OOM
    killer, `kill -9`, a power cut: nothing runs on the way out) left in the hub's
    directory, as large as the chain's export (review 33): those no live import holds
    (it locks its copy) and older than a minute. At the start of `hub import` and `hub
    serve`; returns how many."""
    from tillpoint.agent.files import remove_stale_temps

    files: list[tuple[str, int]] = []
    removed = remove_stale_temps(spool_dir, SPOOL_PREFIX, removed_files=files)
    if removed:
        # which ones and how large (review 34): a copy is as large as the chain's export,
        # and the count alone did not tell support what the disk got back
        log.warning(
            "removed %d copy(ies) of standard input a killed `hub import -` left in %s,"
            " %d bytes in all: %s",
            removed,
            spool_dir,
            sum(size for _, size in files),
            ", ".join(f"{name} ({size} bytes)" for name, size in files),
        )
    return removed


@contextmanager
def read_stdin(
    stream: IO[bytes], spool_dir: Path, fmt: str | None = None, progress: Progress | None = None
) -> Iterator[ImportFile]:
    """`hub import -`: standard input, copied whole into a file in `spool_dir` (the hub's
    directory, on disk: a chain's export is GBs) that is removed afterwards. A store may
    read the rows twice (`ImportFile`), and a pipe is read once. `fmt` None: `sniff_format`."""
    if fmt not in (None, "json", "jsonl"):
        raise InputError(f"unknown import format {fmt!r}: json or jsonl")
    # the handlers first (review 49): a SIGTERM between the copy's creation and their
    # installing (a loaded machine's moment) ended the process at once, the copy left
    with _exit_on_stop() as stop:
        # and a stop is put off while the copy is made and locked (review 55): one inside
        # `tempfile`'s creation, after the file exists and before its name is returned,
        # left it behind; it is acted on once the copy is ours to remove
        stop.defer()
        try:
            spool_dir.mkdir(parents=True, exist_ok=True)
            spooled = tempfile.NamedTemporaryFile(dir=spool_dir, prefix=SPOOL_PREFIX)  # noqa: SIM115
        except OSError as exc:
            raise InputError(
                f"-: cannot keep a copy of standard input in {spool_dir} ({exc.strerror or exc})"
            ) from None
        with spooled as spool:
            # held while the import runs: the next import or serve (`remove_stale_spools`)
            # removes a copy only when no live import holds it
            with contextlib.suppress(OSError):  # a file system without locks: the age alone
                fcntl.flock(spool.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            stop.resume()
            try:
                shutil.copyfileobj(stream, spool, 1 << 20)
                spool.flush()
            except OSError as exc:  # a read error, or the hub's disk full
                raise InputError(f"-: cannot copy standard input ({exc.strerror or exc})") from None
            path = Path(spool.name)
            if fmt is None:
                with path.open("rb") as head:
                    fmt = sniff_format(_first_line(head, ROW_MAX_BYTES))
            yield ImportFile(path, fmt, path.stat().st_size, progress)


class _Stop:
    """The SIGTERM/SIGHUP handler of `_exit_on_stop`: ends the process as Python's own exit
    does, or, between `defer` and `resume`, notes the signal and ends it at `resume`.
    Python runs handlers on the main thread whichever thread the signal reached, so this
    holds where blocking the signal in one thread (`pthread_sigmask`) would not."""

    def __init__(self) -> None:
        self.deferring = False
        self.pending: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.deferring:
            self.pending = self.pending or signum
            return
        raise SystemExit(128 + signum)

    def defer(self) -> None:
        self.deferring = True

    def resume(self) -> None:
        self.deferring = False
        if self.pending is not None:
            raise SystemExit(128 + self.pending)


@contextmanager
def _exit_on_stop() -> Iterator[_Stop]:
    """SIGTERM (`timeout`, a job runner, systemd) and SIGHUP (the terminal closed) end the
    process as Python's own exit does, so the copy of standard input is removed on the way
    out: by default they end it at once, and the copy, as large as the chain's export,
    stayed in the hub's directory for good. Only on the main thread (where signals are
    handled; elsewhere the `_Stop` yielded is never called); the handlers before are put
    back afterwards."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield stop
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
