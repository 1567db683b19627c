"""Limits on what a request may carry (docs/CONTRACT.md §10), shared by the CLI, gRPC and
the models. A module of its own, without the project's imports, so the CLI can read it at
start-up."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, AnyStr

# The protocol's int64 (a seq, a limit, points): SQLite's INTEGER and proto's int64 alike.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Every text field of a request (receipt, refund, identify, balance), in characters.
TEXT_MAX = 128
# One request (a receipt or refund file, a gRPC message to the PosAgent server), in bytes.
REQUEST_MAX_BYTES = 4 << 20  # 4 MiB
# A JSON Lines snapshot's line (the header, a section line, a row), at the till and at
# the hub's `hub import` (its `ROW_MAX_BYTES`): a longer one is refused, naming its
# number, before it is read whole. The till's reading had no bound, and one 300 MB line
# (a file that is not JSON Lines, a producer that lost its newlines) grew `snapshot load`
# by ~1 GB (review 42, left42; `hub import`'s 1.3 GB, polish42). 16 times a request's
# 4 MiB: an offer naming four million SKUs, a header's `appliedThrough` of 500,000 tills.
LINE_MAX_BYTES = 64 << 20


def line_too_long(n: int) -> str:
    """The refusal of a snapshot's line `n`, longer than `LINE_MAX_BYTES` (read when
    said: a test makes the bound small)."""
    return (
        f"snapshot line {n}: longer than {LINE_MAX_BYTES >> 20} MiB"
        " (one row a line: is the file JSON Lines?)"
    )


def bounded_lines(
    readline: Callable[[int], AnyStr],
    too_long: Callable[[int], Exception],
    number: int = 1,
    first: AnyStr | None = None,
    bound: int | None = None,
    size: int | None = None,
) -> Iterator[AnyStr]:
    """The lines `readline` gives (a binary or text file's, standard input's, a pipe's),
    each with its newline, the first being line `number`; none read past `bound` bytes
    (characters, from a text stream; `LINE_MAX_BYTES` when None, read when called): a
    longer one raises `too_long(n)`, its number, before it is read whole, whether or not
    a newline follows it. `first`: the first line when already read, whole or in part
    (the rest of that line is read, within the bound). `size`: the most bytes to read
    after `first` (a payload's end: a line that crosses it is cut there, bounded as cut).

    The one reading of a JSON Lines line's bound: the till's (`snapshot_stream`'s stream,
    `cache_build`'s file) and the hub's (`hub_import`), each with its own numbering and
    words (review 43, tidy43: three copies of these lines until then)."""
    if bound is None:
        bound = LINE_MAX_BYTES
    if first is not None:
        if first and not _ends_a_line(first) and len(first) <= bound:
            first += readline(bound + 1 - len(first))
        if len(first) > bound and not _ends_a_line(first):
            raise too_long(number)
        if not first:
            return
        yield first
        number += 1
    if size is not None:  # a loop of its own: the other's reading pays nothing for it
        while size > 0 and (line := readline(min(bound + 1, size))):
            size -= len(line)
            if len(line) > bound and not _ends_a_line(line):
                raise too_long(number)
            yield line
            number += 1
        return
    while line := readline(bound + 1):
        if len(line) > bound and not _ends_a_line(line):
            raise too_long(number)
        yield line
        number += 1


def _ends_a_line(text: bytes | str) -> bool:
    return text.endswith(b"\n") if isinstance(text, bytes) else text.endswith("\n")


def has_lone_surrogate(doc: Any) -> bool:
    """Whether a JSON document read from escapes holds a lone UTF-16 surrogate (`\\ud800`
    not half of a pair), which no UTF-8 text holds: the CLI's and HTTP's reader refuses
    such a request, the hub sets such a pushed transaction aside."""
    return not is_utf8_text(json.dumps(doc, ensure_ascii=False))


def is_utf8_text(text: str) -> bool:
    """Whether `text` can be written as UTF-8: a command-line argument in other bytes (a
    POS script in windows-1251) reaches Python as lone surrogates (surrogateescape), which
    no store, JSON body or log line can take (docs/CONTRACT.md §10: bad input, exit 2)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
