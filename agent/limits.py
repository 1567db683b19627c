"""Limits on what a request may carry (docs/CONTRACT.md §10), shared by the CLI, gRPC and
the models. A module of its own, without imports, so the CLI can read it at start-up."""

from __future__ import annotations

import json
from typing import Any

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
