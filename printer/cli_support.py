"""What the ``tillpoint print ...`` commands call.

``tillpoint print test``
    :func:`print_test_page` ``(config, ledger=...)``: prints a test page now, directly (not
    through the queue): profile, columns, code page, Russian, Latin and Ukrainian sample text
    (showing how missing letters degrade), a column ruler, a scannable code and a cut. It
    honours the ledger's torn mark as a queued job does: after a torn job the page begins
    with the cut that takes the torn part off, and, sent whole, clears the mark. Raises
    ``PrinterConfigError`` (exit 2) for a configuration that cannot work and ``PrinterError``
    (exit 1) with a one-line reason when the printer cannot be reached or reports a problem.

``tillpoint print preview RECEIPT_RESULT [--offers FILE] [--png FILE]``
    :func:`preview` ``(result_json, offers, out_png, profile)``: lays out the offers block,
    renders the exact ESC/POS bytes the printer would get, decodes them back and returns the
    paper as text (and writes a PNG when ``out_png`` is given). No printer needed.
    ``result_json`` is a ``CheckoutResult`` (exactly its ``printedOffers`` are shown, picked
    from ``offers``, which are snapshot offers with ``printText``; an empty or absent list
    raises ``NothingToPrint``), a bare ``{"receiptId"}`` (every given offer is shown) or
    directly a print-job payload (``receiptId`` + ``offers`` with ``text``).
    Raises ``InputError`` (exit 2) with one line for input that cannot be previewed.

Neither writes anything to stdout: the CLI decides what to print (python-escpos is imported
quietly, see ``_escpos.py``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import tzinfo
from pathlib import Path
from typing import Any

from tillpoint.agent.db import connect, write_refused
from tillpoint.agent.errors import InputError, StorageError
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.decode import decode
from tillpoint.printer.errors import ConnectionLost, PrinterConfigError, PrinterError
from tillpoint.printer.layout import (
    Block,
    Code,
    Cut,
    Rule,
    Text,
    offers_blocks,
    render_escpos,
    separator_bytes,
)
from tillpoint.printer.payload import PrintPayload, parse_payload, payload_for_checkout
from tillpoint.printer.profiles import Profile, resolve_profile
from tillpoint.printer.queue import GS_R_PAPER, query_health, read_torn, write_torn
from tillpoint.printer.render import render_png, render_text
from tillpoint.printer.transport import Transport, make_transport

log = logging.getLogger("tillpoint.printer")

__all__ = [
    "NothingToPrint",
    "preview",
    "preview_payload",
    "print_test_page",
    "send_now",
    "test_page_blocks",
]


def test_page_blocks(profile: Profile, connection: str = "") -> list[Block]:
    """The test page: what the printer is set up as, sample text in three scripts, a code."""
    ruler = ("1234567890" * ((profile.columns // 10) + 1))[: profile.columns]
    blocks: list[Block] = [
        Text("ТЕСТОВАЯ СТРАНИЦА", align="center", bold=True, tall=True),
        Text("tillpoint", align="center"),
        Rule("="),
        Text(f"Профиль: {profile.name}"),
        Text(f"Ширина: {profile.columns} колонок, {profile.width_px} точек"),
        Text(f"Кодовая страница: {profile.codepage.upper()} (ESC t {profile.codepage_table})"),
    ]
    if connection:
        blocks.append(Text(f"Подключение: {connection}"))
    blocks += [
        Text(f"Код купона: {profile.code_modes()[0]}"),
        Rule("-"),
        Text("Съешь же ещё этих мягких французских булок, да выпей чаю."),
        Text("The quick brown fox jumps over the lazy dog."),
        Text("Українська: Ґанок, Іван, їжак, Євген."),
        Text("Знаки: № «» — − ₽ … 0123456789"),
        Text(ruler),
        Rule("-"),
        Code("TP1-TEST"),
        Text("TP1-TEST", align="center"),
        Cut(),
    ]
    return blocks


def send_now(
    data: bytes,
    config: PrinterConfig,
    transport_factory: Callable[[], Transport] | None = None,
    *,
    before_write: Callable[[], None] | None = None,
) -> None:
    """Send bytes to the printer now, with the same checks as the queue; raise PrinterError.
    `before_write` is called once the printer is open and healthy, just before the bytes go."""
    transport = (transport_factory or (lambda: make_transport(config)))()
    try:
        transport.open()
        if transport.readable and config.query_status:
            health = query_health(transport, config.status_timeout_s)
            if health.blocking:
                raise PrinterError(f"{transport.description}: {health.problem}")
        if before_write is not None:
            before_write()
        transport.write(data)
        if transport.readable and config.confirm:
            transport.write(GS_R_PAPER)
            try:
                transport.read(1, config.confirm_timeout_s)
            except ConnectionLost as exc:
                raise PrinterError(f"{exc} before confirming the page") from None
    finally:
        transport.close()


# The codes the test page draws (`test_page_blocks`): a torn page's separator outlasts them.
TEST_PAGE_CODES = ("TP1-TEST",)


class _TornMark:
    """The ledger's torn mark (`queue.read_torn`) as `print test` keeps it: read before the
    page, set before its bytes go (a page cut short is a torn part too), gone once it went
    whole. No ledger (the agent never ran here): nothing torn, and none is made. A ledger
    that cannot be read or written is logged, and the page still printed."""

    def __init__(self, ledger: Path | None) -> None:
        self.codes: tuple[str, ...] | None = None
        self._conn: sqlite3.Connection | None = None
        if ledger is None or not ledger.exists():
            return
        try:
            self._conn = connect(ledger, create=False)
            self.codes = read_torn(self._conn)
        except (sqlite3.Error, StorageError) as exc:
            log.warning("cannot read the printer's torn-job mark in %s: %s", ledger, exc)
            self.close()

    def write(self, codes: tuple[str, ...] | None) -> None:
        if self._conn is None:
            return
        try:
            write_torn(self._conn, codes)
        except sqlite3.Error as exc:
            log.warning("cannot keep the printer's torn-job mark in the ledger: %s", exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def print_test_page(
    config: PrinterConfig,
    *,
    transport_factory: Callable[[], Transport] | None = None,
    ledger: Path | None = None,
) -> None:
    """Print the test page on the configured printer now. `ledger`: the till's ledger,
    whose torn mark the page honours and clears as a queued job does (CONTRACT §7)."""
    if config.kind == "none":
        raise PrinterConfigError("no printer configured: set [printer] kind in the configuration")
    profile = resolve_profile(config)
    where = config.host if config.kind == "network" else config.device or config.kind
    data = render_escpos(test_page_blocks(profile, f"{config.kind} {where}"), profile)
    mark = _TornMark(ledger)
    try:
        torn = mark.codes
        if torn is not None:
            # a job cut short left a part with no cut after it: the page is not glued on
            data = separator_bytes(profile, torn + TEST_PAGE_CODES) + data
        send_now(
            data,
            config,
            transport_factory,
            before_write=lambda: mark.write((*(torn or ()), *TEST_PAGE_CODES)),
        )
        mark.write(None)
    finally:
        mark.close()


def _profile(profile: PrinterConfig | Profile | str | None) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, PrinterConfig):
        return resolve_profile(profile)
    return resolve_profile(PrinterConfig(profile=profile or "generic-80mm"))


class NothingToPrint(InputError):
    """The result printed no offers: there is no coupon to show (the CLI says so, exit 0)."""


# Fields only a CheckoutResult has: such a document prints exactly its printedOffers.
_RESULT_KEYS = ("card", "lines", "mode", "totalMinor", "payableMinor")


def _payload_from(
    result_json: Mapping[str, Any],
    offers: Sequence[Mapping[str, Any]] | None,
    zone: tzinfo | None = None,
) -> PrintPayload:
    if not isinstance(result_json, Mapping):
        raise InputError("the receipt result must be a JSON object")
    given = result_json.get("offers")
    if (
        isinstance(given, list)
        and given
        and all(isinstance(o, Mapping) and "text" in o for o in given)
    ):
        return parse_payload(result_json)  # already a print-job payload
    receipt_id = result_json.get("receiptId")
    if not isinstance(receipt_id, str) or not receipt_id:
        raise InputError("the receipt result has no receiptId")
    card = result_json.get("card")
    first_name = card.get("firstName") if isinstance(card, Mapping) else None
    pool = list(offers or [])
    by_id = {o.get("id"): o for o in pool if isinstance(o, Mapping)}
    wanted = result_json.get("printedOffers")
    if wanted is None and any(key in result_json for key in _RESULT_KEYS):
        wanted = []  # a CheckoutResult in proto3 JSON leaves an empty list out
    if wanted is not None:
        if not isinstance(wanted, list):
            raise InputError("printedOffers must be a list of offer ids")
        if not wanted:
            raise NothingToPrint(f"nothing to print: receipt {receipt_id} printed no offers")
        missing = [oid for oid in wanted if oid not in by_id]
        if missing:
            raise InputError(
                f"offer {missing[0]} is in printedOffers but not among the offers given"
            )
        chosen = [by_id[oid] for oid in wanted]
    else:
        chosen = pool  # a bare {"receiptId"}: every offer given
    if not chosen:
        raise InputError("nothing to preview: the result printed no offers and none were given")
    at = result_json.get("at")
    return parse_payload(
        payload_for_checkout(
            receipt_id,
            at if isinstance(at, str) else None,
            first_name if isinstance(first_name, str) else None,
            chosen,
            zone,
        )
    )


def preview_payload(
    payload: PrintPayload,
    out_png: Path | None = None,
    profile: PrinterConfig | Profile | str | None = None,
    *,
    heading: str | None = None,
) -> str:
    """The text picture of a payload's offers block (and its PNG when ``out_png`` is given)."""
    prof = _profile(profile)
    if heading is None:
        heading = profile.heading if isinstance(profile, PrinterConfig) else "ВАШИ ПРЕДЛОЖЕНИЯ"
    data = render_escpos(offers_blocks(payload, heading=heading, codepage=prof.codepage), prof)
    docs = decode(data, columns=prof.columns, codepages={prof.codepage_table: prof.codepage})
    doc = docs[0]
    if prof.cut == "none" or not (prof.full_cut or prof.part_cut):
        # no cutter: the job ends with its feed, whole (it was drawn "не отрезано: печать
        # прервана", a job broken off, on every coupon; review 54, mut54b)
        doc.complete = True
    if out_png is not None:
        try:
            render_png(doc, Path(out_png), width_px=prof.width_px, columns=prof.columns)
        except OSError as exc:  # a full disk or `ulimit -f`: exit 1 (review 40, rev40c)
            raise write_refused(Path(out_png), exc, f"cannot write {out_png}") from None
    return render_text(doc, prof.columns)


def preview(
    result_json: Mapping[str, Any],
    offers: Sequence[Mapping[str, Any]] | None = None,
    out_png: Path | None = None,
    profile: PrinterConfig | Profile | str | None = None,
    zone: tzinfo | None = None,
) -> str:
    """Lay out the offers block of a checkout result as the printer would; see the module
    doc. ``zone``: the store's (a snapshot's ``program.timezone``), as the till prints."""
    return preview_payload(_payload_from(result_json, offers, zone), out_png, profile)
