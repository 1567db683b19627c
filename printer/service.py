"""The till's devices as one object for ``tillpoint run``: print worker, pole display, scanner.

``build_devices(settings)`` validates ``settings.printer``, ``settings.display`` and
``settings.scanner`` (PrinterConfigError on a bad table) and builds a :class:`Devices` object;
agent/app.py gives it to the ``Agent`` as its device notifier, then starts it. The agent
calls, after pricing (never waiting on a device):

- ``devices.after_quote(result)``: shows ``result.display`` on the pole display;
- ``devices.after_checkout(result)``: shows it too and wakes the print worker when the
  result printed offers (the job row is already in the ledger, committed with the receipt);
- ``devices.status()``: printer, display and scanner state for ``tillpoint status``.

A scan from the kiosk's serial scanner goes to ``on_scan``. By default (`greet_on_scan`, with
``agent.scan``) a coupon code the till knows waits in ``agent.scanned_coupons`` for the receipt
being rung up (the display says it was taken), anything else is identified as a card and the
customer is greeted. A ``TP1-`` offer code (a printed offer without a one-time code) is only
logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from pydantic import ValidationError
from tillpoint.agent.config import env_source
from tillpoint.agent.models import plain_message
from tillpoint.agent.results import CheckoutResult, ScanResult
from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig
from tillpoint.printer.display import CustomerDisplay, DisplayStatus
from tillpoint.printer.errors import PrinterConfigError
from tillpoint.printer.messages import REFUSED_CARD, fit_lines, greeting
from tillpoint.printer.queue import PrinterStatus, PrintWorker
from tillpoint.printer.scanner import ScannerReader, ScannerStatus

__all__ = ["Devices", "DevicesStatus", "build_devices", "greet_on_scan", "load_configs"]

log = logging.getLogger("tillpoint.devices")


class DevicesStatus(TypedDict):
    printer: PrinterStatus
    display: DisplayStatus
    scanner: ScannerStatus


def _validate(model: Any, table: str, values: Mapping[str, Any]) -> Any:
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        if err.get("type") == "extra_forbidden":  # the words of every other table's typo
            raise PrinterConfigError(f"config [{table}] {where} is not a known field") from None
        key = f"{table}.{where}" if where else table
        # where a unit's Environment= set it, as the other tables' problems say it
        source = env_source(*key.split("."))
        raise PrinterConfigError(f"config [{key}]: {plain_message(err)}{source}") from None


def load_configs(
    printer: Mapping[str, Any], display: Mapping[str, Any], scanner: Mapping[str, Any]
) -> tuple[PrinterConfig, DisplayConfig, ScannerConfig]:
    """Validate the three tables; PrinterConfigError names the key and what is wrong, of
    every table that has a problem (`config check` said the first table's only: a wrong
    [scanner] showed up after the [printer] was mended)."""
    found: list[Any] = []
    problems: list[str] = []
    for model, table, values in (
        (PrinterConfig, "printer", printer),
        (DisplayConfig, "display", display),
        (ScannerConfig, "scanner", scanner),
    ):
        try:
            found.append(_validate(model, table, values))
        except PrinterConfigError as exc:
            problems.append(str(exc).removeprefix("config "))
    if problems:
        raise PrinterConfigError("config " + "; ".join(problems))
    return found[0], found[1], found[2]


class Devices:
    """The print worker, the display and the scanner of one till."""

    def __init__(
        self,
        ledger_path: Path,
        printer: PrinterConfig,
        display: DisplayConfig,
        scanner: ScannerConfig,
        on_scan: Callable[[str], None] | None = None,
    ) -> None:
        self.worker = PrintWorker(ledger_path, printer)
        self.display = CustomerDisplay(display)
        # What a scan does: set before `start` (`greet_on_scan`), or given here.
        self.on_scan: Callable[[str], None] = on_scan or (lambda text: None)
        self.scanner: ScannerReader | None = None
        if scanner.kind != "none":
            self.scanner = ScannerReader.from_config(scanner, lambda text: self.on_scan(text))

    def start(self) -> None:
        if not self.worker.disabled:
            self.worker.start()
        self.display.start()
        if self.scanner is not None:
            self.scanner.start()

    def stop(self) -> None:
        if self.scanner is not None:
            self.scanner.stop()
        self.display.stop()
        self.worker.close()

    def show(self, lines: Sequence[str]) -> None:
        self.display.show(lines)

    def after_quote(self, result: CheckoutResult) -> None:
        # The typed result (`Agent`'s) is read by attribute: no JSON is built per sale.
        if result.display:
            self.display.show(list(result.display))

    def after_checkout(self, result: CheckoutResult) -> None:
        self.after_quote(result)
        if result.printed_offers:
            self.worker.wake()

    def status(self) -> DevicesStatus:
        scanner = (
            self.scanner.status()
            if self.scanner is not None
            else ScannerStatus(state="DISABLED", device="none", scans=0, last_error=None)
        )
        return DevicesStatus(
            printer=self.worker.status(), display=self.display.status(), scanner=scanner
        )


def greet_on_scan(scan: Callable[[str], ScanResult], devices: Devices) -> None:
    """What a scan from the kiosk's scanner does by default: route it (`scan`, the
    agent's): a known coupon is taken for the receipt, a printed offer's `TP1-` code is
    only logged, a card greets the customer (by name when it is known; an UNKNOWN card
    without one, since its sale earns points), a blocked or invalid one is not accepted."""

    def on_scan(text: str) -> None:
        try:
            routed = scan(text)
        except Exception as exc:
            log.warning("scanned text not identified: %s", exc)
            return
        if routed.kind == "OFFER":
            log.info("scanned the coupon of offer %s", routed.offer_id)
            return
        if routed.kind == "COUPON":
            devices.show(fit_lines(["Купон принят", str(routed.code)]))
            return
        card = routed.card
        if card is not None and card.status == "FOUND":
            devices.show(greeting(card.first_name))
        elif card is not None and card.status == "UNKNOWN":
            # a card this till does not know yet earns its points (§4): no refusal
            devices.show(greeting(None))
        else:
            devices.show([REFUSED_CARD, ""])

    devices.on_scan = on_scan


def build_devices(settings: Any) -> Devices:
    """The devices configured for this till, not started (PrinterConfigError on a bad
    table). agent/app.py gives them to the `Agent`, sets `on_scan`, then starts them."""
    printer, display, scanner = load_configs(
        getattr(settings, "printer", {}) or {},
        getattr(settings, "display", {}) or {},
        getattr(settings, "scanner", {}) or {},
    )
    return Devices(Path(settings.data_dir) / "ledger.db", printer, display, scanner)
