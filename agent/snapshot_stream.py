"""Snapshots as JSON Lines: a chain-sized snapshot is applied row by row, never whole.

Format (UTF-8, one JSON object a line; blank lines are ignored):

    {"format": "tillpoint.snapshot/jsonl", "version": 7, "baseVersion": 0, ...header}
    {"section": "products"}
    {"sku": "4601234000017", "name": "Молоко 3,2% 1 л", "category": "dairy"}
    ...
    {"section": "offers"}
    {"id": "o-1", "kind": "PERCENT_OFF", ...}

The first line is the snapshot's header (every field of a snapshot but its row lists);
then each `{"section": NAME}` line starts a section (categories, products, customers,
cards, offers, in any order) whose rows follow one a line, in exactly the shapes of §3.
A bad line is refused with its line number and the whole snapshot is rolled back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import ValidationError

from . import limits
from .cache import Row
from .errors import InputError
from .models import (
    ROW_MODELS,
    Model,
    SnapshotHeader,
    describe,
    near_miss,
    parse_snapshot_part,
    unknown_fields,
    without_nulls,
    without_unknown,
)

FORMAT = "tillpoint.snapshot/jsonl"

# A snapshot's names a JSON reader would silently take the last of when one is given twice
# in an object: the sections (the rows of the first list were not loaded), the program,
# `removed` (and each of its lists) and the header's fields. A row's own field given twice
# still counts its last (docs/CONTRACT.md §3, the phone decision).
GIVEN_ONCE = frozenset(
    {*ROW_MODELS, "program", "removed", "appliedThrough", "version", "baseVersion"}
    | {"issuedAt", "expiresAt", "format"}
)


class _Repeated(dict):  # type: ignore[type-arg]
    """A JSON object with a key given twice (`keep_repeats`): which keys."""

    repeated: tuple[str, ...] = ()


def keep_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for a snapshot's JSON: a dict, which remembers the keys given
    twice in it (the last value counts, as in any reader) for `refuse_repeats`."""
    doc = dict(pairs)
    if len(doc) == len(pairs):
        return doc
    marked = _Repeated(doc)
    seen: set[str] = set()
    repeated = []
    for key, _ in pairs:
        if key in seen:
            repeated.append(key)
        seen.add(key)
    marked.repeated = tuple(repeated)
    return marked


def refuse_repeats(doc: Any, where: str) -> None:
    """Refuse a snapshot (read with `keep_repeats`) that gives one of `GIVEN_ONCE` twice
    in its own object or in `removed`: "snapshot: products is given twice in one object"."""
    for part in (doc, doc.get("removed") if isinstance(doc, dict) else None):
        for key in getattr(part, "repeated", ()):
            if key in GIVEN_ONCE:
                raise InputError(
                    f"{where}: {key} is given twice in one object: merge them into one"
                )


# Enough of a file to tell a JSON object from anything else before reading it whole.
HEAD_BYTES = 4096


def refuse_non_object(head: bytes, name: str, what: str = "a snapshot") -> None:
    """A snapshot, a signed bundle, an import file and each JSON Lines row start with `{`
    (after blanks and a byte order mark): anything else is refused on its first bytes,
    before a reader takes the rest whole or looks for a line's end (`/dev/zero` was read
    into memory at 1 GB a second)."""
    if _wide_object(head[:64]):
        # UTF-16 or UTF-32 without a byte order mark (a .NET `Encoding.Unicode`), in the
        # words of every other JSON input (`cli.parse_json`, review 39 spec39a): `hub
        # import` said "Expecting property name … column 2", a big-endian file "it does
        # not start with a JSON object's {" (review 39, rev39f)
        raise InputError(f"{name}: not valid JSON (not UTF-8 text)")
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if text and not text.startswith(b"{"):
        raise InputError(f"{name}: not {what}: it does not start with a JSON object's {{")


_WIDE_CODINGS = ("utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be")


# The byte order marks of UTF-32 and UTF-16 (UTF-32 LE's begins with UTF-16 LE's).
_WIDE_MARKS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff", b"\xff\xfe", b"\xfe\xff")


def _wide_object(head: bytes) -> bool:
    """Whether `head` (a file's first bytes) is a JSON object's start in UTF-16 or UTF-32:
    with its byte order mark (Windows Notepad's "Unicode", PowerShell 5's `Out-File`:
    said "it does not start with a JSON object's {" until review 40, rev40c), or without
    one, NULs beside its ASCII (RFC 4627's way to tell), which no UTF-8 JSON text has.
    Zeros alone (`/dev/zero`) are not: "not a snapshot" as before."""
    if head.startswith(_WIDE_MARKS):
        return True
    if b"\x00" not in head[:4]:
        return False
    for coding in _WIDE_CODINGS:
        text = head.decode(coding, "replace").lstrip(" \t\r\n")
        if text.startswith("{"):
            return True
    return False


def stream_lines(stream: Any, first: bytes | str | None = None) -> Iterator[bytes | str]:
    """The lines of `stream` (a binary or text file, standard input, a pipe), each with its
    newline, none read past `limits.LINE_MAX_BYTES` (refused naming it: one 300 MB line
    grew `snapshot load` by ~1 GB until review 42, left42); `first`: its first line when
    already read, whole or in part (the rest of that line follows)."""
    # a text stream's first line is text (its bound in characters), a binary one's bytes
    given: Any = first
    return limits.bounded_lines(stream.readline, line_too_long_error, first=given)


def line_too_long_error(n: int) -> InputError:
    """The till's refusal of snapshot line `n`, longer than `limits.LINE_MAX_BYTES`."""
    return InputError(limits.line_too_long(n))


def is_jsonl(first_line: bytes | str) -> bool:
    text = first_line.decode("utf-8", "replace") if isinstance(first_line, bytes) else first_line
    return f'"{FORMAT}"' in text.replace(" ", "")


def read_lines(
    lines: Iterable[bytes | str], ignored: set[str] | None = None
) -> tuple[SnapshotHeader, Iterator[Row]]:
    """The header and the rows. A field or a section the contract does not define is left
    out (see `models.parse_snapshot_part`) and named in `ignored`."""
    if ignored is None:
        ignored = set()
    if hasattr(lines, "readline"):  # a file or a stream: its lines bounded
        lines = stream_lines(lines)
    numbered = enumerate(lines, start=1)
    n, first = next(((n, line) for n, line in numbered if line.strip()), (0, ""))
    if not n:
        raise InputError("snapshot: the file is empty")
    head = _line_json(first, n, keep_repeats)
    refuse_repeats(head, f"snapshot line {n}")
    inline = (
        next((name for name in ROW_MODELS if name in head), None)
        if isinstance(head, dict)
        else None
    )
    if inline is not None:  # not a newer hub's field: rows that would be left out, all of them
        raise InputError(
            f"snapshot line {n}: {inline} in the header line: in JSON Lines a section's rows"
            f' follow a {{"section": "{inline}"}} line, one row a line'
        )
    if not isinstance(head, dict) or head.pop("format", None) != FORMAT:
        raise InputError(f'snapshot line {n}: the first line must have "format": "{FORMAT}"')
    header = parse_snapshot_part(SnapshotHeader, head, f"snapshot line {n}", ignored)
    return header, _rows(numbered, ignored=ignored)


def _line_json(
    text: bytes | str, n: int, hook: Callable[[list[tuple[str, Any]]], Any] | None = None
) -> Any:
    """A header or section line read with Python's reader; what it cannot take (nesting
    past its recursion limit, an integer past 4,300 digits) is bad input like any other,
    not an internal error (a row's own reader, pydantic's, says so itself)."""
    try:
        return json.loads(text, object_pairs_hook=hook)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"snapshot line {n}: not valid JSON ({_not_json(exc)})") from None
    except RecursionError:
        raise InputError(f"snapshot line {n}: not valid JSON (nested too deeply)") from None
    except ValueError:  # Python's limit on an integer's digits
        raise InputError(
            f"snapshot line {n}: not valid JSON (a number with too many digits)"
        ) from None


def _rows(
    numbered: Iterator[tuple[int, bytes | str]],
    section: str | None = None,
    ignored: set[str] | None = None,
) -> Iterator[Row]:
    """The rows, validated one a line. The loop is the per-row cost besides validation and
    the insert (millions of rows): one decode, one strip, the model's bound method.

    `section`: the section the lines start in (a part of a section, `cache_build`).
    `ignored`: where the fields and sections left out are named (a newer hub's; a row with
    one is validated again without it, and stored so)."""
    if ignored is None:
        ignored = set()
    validate: Callable[[str], Model] | None = None
    skipping = False  # inside a section this version does not know
    if section is not None:
        skipping = section not in ROW_MODELS
        if skipping:
            ignored.add(f"section {section}")
        else:
            validate = ROW_MODELS[section].model_validate_json
    for n, line in numbered:
        try:
            text = (line.decode("utf-8") if isinstance(line, bytes) else line).strip()
        except UnicodeDecodeError as exc:
            raise InputError(f"snapshot line {n}: not valid JSON ({_not_json(exc)})") from None
        if not text:
            continue
        if text.startswith('{"section"'):
            marker = _line_json(text, n)
            section = marker.get("section")
            if not isinstance(section, str) or not section or len(marker) != 1:
                raise InputError(
                    f'snapshot line {n}: a section line is {{"section": NAME}}'
                    f" (one of {', '.join(ROW_MODELS)})"
                )
            skipping = section not in ROW_MODELS
            if skipping:  # a newer hub's: its rows are left out; a typo's are refused
                near = near_miss(section)
                if near is not None:
                    raise InputError(
                        f"snapshot line {n}: section {section!r} is not a known section"
                        f" (did you mean {near}?)"
                    )
                ignored.add(f"section {section}")
                continue
            validate = ROW_MODELS[section].model_validate_json
            continue
        if skipping:
            continue
        if section is None or validate is None:
            _spelt_section_line(text, n)
            raise InputError(f'snapshot line {n}: a row before any {{"section": ...}} line')
        if "." in text and _has_float(text):
            raise InputError(f"snapshot line {n}: numbers with a fraction are not allowed")
        try:
            row = validate(text)
        except ValidationError as exc:
            _spelt_section_line(text, n)
            _refuse_invalid_json(exc, text, n)
            problem = exc
            if "null" in text:  # a field set to null is the field left out (proto3 JSON)
                text = json.dumps(
                    without_nulls(json.loads(text)), ensure_ascii=False, separators=(",", ":")
                )
                try:
                    row = validate(text)
                except ValidationError as again:
                    problem = again
                else:
                    yield section, row, text
                    continue
            row, text = _known_fields_only(
                validate, text, problem, f"snapshot line {n}", section, ignored
            )
        yield section, row, text


def _not_json(exc: UnicodeDecodeError | json.JSONDecodeError) -> str:
    """What is wrong with a line, in the words `hub import` says it (sync/hub_import.py):
    "not UTF-8 text" (not the codec's "invalid continuation byte"), "Expecting value at
    column 5" (not json's "Expecting value: line 1 column 5 (char 4)": a line is one line,
    the file's line number is said before)."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def _refuse_invalid_json(exc: ValidationError, text: str, n: int) -> None:
    """A row that is not JSON at all (a control byte in a string, a line cut short), said as
    a header line's is: "snapshot line 13: not valid JSON (Invalid control character at
    column 3)". Until review 32 it said pydantic's words after the section's name,
    "customers: Invalid JSON: control character (\\u0000-\\u001F) found while parsing a string
    at line 1 column 3", and a line cut short that held a `null` failed the build ("the
    cache build failed (exit 1: json.decoder.JSONDecodeError: …)")."""
    if exc.errors(include_url=False)[0].get("type") != "json_invalid":
        return
    try:
        json.loads(text)
    except json.JSONDecodeError as bad:
        raise InputError(f"snapshot line {n}: not valid JSON ({_not_json(bad)})") from None
    except (RecursionError, ValueError):
        pass
    # what Python's reader takes and pydantic's does not (nesting past pydantic's limit, a
    # NaN): pydantic's own reason, without its "Invalid JSON: " and its "line 1"
    reason = str(exc.errors(include_url=False)[0].get("msg", "")).removeprefix("Invalid JSON: ")
    raise InputError(
        f"snapshot line {n}: not valid JSON ({reason.replace(' at line 1 column ', ' at column ')})"
    ) from None


def _spelt_section_line(text: str, n: int) -> None:
    """A section line written otherwise than `{"section": NAME}` (`{ "section": ... }`):
    refused as what it is, not as a row (only when a row's reading has failed)."""
    if text.startswith("{") and text[1:].lstrip().startswith('"section"'):
        raise InputError(
            f'snapshot line {n}: a section line is written {{"section": NAME}} exactly'
            ' (no blank after its "{")'
        )


def _known_fields_only(
    validate: Callable[[str], Model],
    text: str,
    exc: ValidationError,
    where: str,
    section: str,
    ignored: set[str],
) -> tuple[Model, str]:
    """The row validated again without the fields `exc` found unknown, and its text so
    (what is stored); the refusal when that is not what was wrong."""
    unknown = unknown_fields(exc)
    if not unknown:
        raise InputError(f"{where}: {section}: {describe(exc)}") from None
    cleaned = without_unknown(
        json.loads(text), unknown, ignored, f"{where}: {section}", f"{section}[]."
    )
    text = json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))
    try:
        return validate(text), text
    except ValidationError as again:
        raise InputError(f"{where}: {section}: {describe(again)}") from None


def _has_float(text: str) -> bool:
    """True when the line has a JSON number with a fraction or exponent (never money)."""
    floats: list[str] = []

    def seen(value: str) -> float:
        floats.append(value)
        return 0.0

    json.loads(text, parse_float=seen)
    return bool(floats)
