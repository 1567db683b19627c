"""Structured logs: JSON lines for the journal, plain text on a terminal; nothing secret.

Card numbers and phones are masked wherever they appear in a message or a field
(`2770000000017` → `*********0017`, `+79161234567` → `+7*******4567`), so a log can be
handed to support without leaking customers' identifiers.

What looks like one by its digits alone but is not, by its context, is left as it is
(`is_not_a_card`): digits glued to a letter, `_` or a decimal point (a snapshot file's
name `v0000000001-full.snap`, a hex digest, `1.23456789`), or to a file name's extension
(a delta's `v0000000002-from-0000000001.snap`), a size or a time (`12345678
bytes`, `… ms`), and a number named by what it counts (`seq 12345678`, `version …`,
`port …`, `at byte …`, `balancePoints …`). A card or a phone is a token of its own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_PHONE = re.compile(
    r"(?<!\d)(\+7|8|7)?[\s\-(]*(\d{3})[\s\-)]*(\d{3})[\s\-]*(\d{2})[\s\-]*(\d{2})(?!\d)"
)
_LONG_DIGITS = re.compile(r"(?<!\d)\d{8,19}(?!\d)")
# the words that name a number for what it counts, just before it (`seq 12345678`)
_COUNTED = re.compile(
    r"(?:\b(?:seq|version|versions|byte|port|pid)|[Pp]oints|[Ss]eq|[Vv]ersion)[\s:=\"'#]*$"
)
# a unit just after it (`12345678 bytes`)
_UNIT = re.compile(r"\s?(?:bytes?|B|KiB|MiB|GiB|KB|MB|GB|ms|s|µs|ns)\b")


def is_not_a_card(text: str, start: int, end: int) -> bool:
    """Whether the digits text[start:end] (a card's or a phone's by their look) are, by
    what stands around them, some other number: glued to a letter, `_` or a decimal point,
    followed by a unit, or named by what they count (see the module's note)."""
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if (
        before.isalpha()
        or before == "_"
        or (before == "." and text[start - 2 : start - 1].isdigit())
    ):
        return True
    if after.isalpha() or after == "_" or (after == "." and text[end + 1 : end + 2].isdigit()):
        return True
    if after == "." and text[end + 1 : end + 2].isalpha():
        return True  # a file name's stem (`v0000000002-from-0000000001.snap`, review 33)
    return bool(_UNIT.match(text, end) or _COUNTED.search(text, 0, start))


def mask(text: str) -> str:
    def long_digits(m: re.Match[str]) -> str:
        digits = m.group(0)
        if is_not_a_card(m.string, m.start(), m.end()):
            return digits
        return "*" * (len(digits) - 4) + digits[-4:]

    def phone(m: re.Match[str]) -> str:
        prefix = m.group(1) or ""
        # the number's own span: the match may begin with blanks or a bracket
        first = m.start(1) if prefix else m.start(2)
        if is_not_a_card(m.string, first, m.end()):
            return m.group(0)
        last4 = m.group(4) + m.group(5)
        lead = m.group(0)[: first - m.start()]  # the blank before it kept: "and ******4567"
        return f"{lead}{prefix}*******{last4}" if prefix else f"{lead}******{last4}"

    text = _PHONE.sub(phone, text)
    return _LONG_DIGITS.sub(long_digits, text)


_DIGIT_RUN = re.compile(r"\d{5,}")


def mask_identifier(text: str) -> str:
    """A card number or phone the operator gave (`balance`'s card), for the error line
    that names it: masked as the logs mask it (`*********0017`, `+7*******4567`), and any
    run of five digits or more that `mask` leaves (a number past 19 digits, such as a
    card read twice that no one holds) all but its last four. The line reaches a POS's
    log and support tickets: it wrote the number whole until review 39 (rev39d)."""
    return _DIGIT_RUN.sub(lambda m: "*" * (len(m[0]) - 4) + m[0][-4:], mask(text))


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("device_id", "receipt_id", "seq", "version", "state"):
            if hasattr(record, key):
                entry[key] = mask(str(getattr(record, key)))
        if record.exc_info:
            entry["error"] = mask(repr(record.exc_info[1]))
            # the trace support needs for a bug (an HTTP 500, the contract §12), masked too
            entry["trace"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The terminal's lines; a trace masked too, as the JSON form's is (the filter masks
    the message only, and a trace repeats the exception's words: a card or a phone in an
    error said there unmasked)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatException(self, ei: Any) -> str:
        return mask(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return mask(super().formatStack(stack_info))


def setup(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure the root logger: `fmt` is "json", "text" or "auto" (JSON unless a TTY)."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# A record a one-shot command's own error line says again (`setup_one_shot`): logged for
# `tillpoint run`'s operator (the state a sale met), `extra=SAID_BY_THE_COMMAND`.
SAID_BY_THE_COMMAND = {"said_by_the_command": True}


class OneShotFormatter(logging.Formatter):
    """A one-shot command's stderr line: `tillpoint: warning: …`, one line, no trace."""

    def format(self, record: logging.LogRecord) -> str:
        from .errors import one_line

        word = "warning" if record.levelno < logging.ERROR else "error"
        return f"tillpoint: {word}: {one_line(record.getMessage())}"


def say_once(logger: logging.Logger, last: str, level: int, text: str) -> str:
    """`text` at `level` when it is not `last` (what this retry said before), else at
    DEBUG: a retry that fails the same way (the till's pull and push during an outage,
    the hub's watcher round every 0.5 s) wrote the same line for as long as it lasted.
    Returns `text`, the next `last`."""
    logger.log(logging.DEBUG if text == last else level, "%s", text)
    return text


def setup_one_shot() -> None:
    """The logs of a one-shot command (`tillpoint checkout`, `sync now`, …), run as its
    own process: its warnings on stderr as its own lines are (`tillpoint: warning: …`, one
    line, masked), none of a record its error line says again (`SAID_BY_THE_COMMAND`).
    Before review 38 logging was not set up there and Python's last resort wrote the bare
    message, a trace too: a sale refused on a busy ledger said "sales are refused: the
    ledger is busy …" and then its `tillpoint: ` line (two lines, CONTRACT §10: one).
    `run` and `hub serve` set up their own (`setup`), which replaces it. A library's
    warnings are not printed (tillpoint's loggers only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(OneShotFormatter())
    handler.addFilter(MaskingFilter())
    handler.addFilter(lambda record: not getattr(record, "said_by_the_command", False))
    # tillpoint's own warnings only: a library's (psycopg's pool, "discarding closed
    # connection …", before `hub import`'s one line about the lost connection) is not the
    # command's to say; `hub serve` logs them (review 38: rev38b's handler printed it).
    handler.addFilter(lambda record: record.name.partition(".")[0] == "tillpoint")
    logging.getLogger().handlers[:] = [handler]
