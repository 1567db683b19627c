"""Limits on what a request may carry (docs/CONTRACT.md §10), shared by the CLI, gRPC and
the models. A module of its own, without imports, so the CLI can read it at start-up."""

from __future__ import annotations

import json
from typing import Any

# Every text field of a request (receipt, refund, identify, balance), in characters.
TEXT_MAX = 128
# One request (a receipt or refund file, a gRPC message to the PosAgent server), in bytes.
REQUEST_MAX_BYTES = 4 << 20  # 4 MiB


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
