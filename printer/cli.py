"""``tillpoint print ...``: the printer's commands, added to the agent's CLI as a plugin.

=================================================== ==========================================
``tillpoint print test``                            print a test page on the configured printer
``tillpoint print preview RESULT [--offers FILE]``  the offers block as text (``--png FILE``:
``[--png FILE] [--profile NAME]``                   also as an image); no printer needed
``tillpoint print queue [--all]``                   the print jobs not yet done (or all)
``tillpoint print retry RECEIPT_ID``                print a FAILED job again, a waiting one now
=================================================== ==========================================

``RESULT`` is a ``CheckoutResult`` JSON file (or ``-``), or a print-job payload. The offers
come from ``--offers`` (a snapshot JSON or a list of offers); without it, from the job this
till queued for that receipt. With ``--json`` every command prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
from datetime import tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tillpoint.agent.errors import InputError

__all__ = ["register"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "print",
        help="receipt printer: test page, coupon preview, print queue",
        description="The receipt printer's commands (see docs/PRINTING.md).",
    )
    actions = p.add_subparsers(dest="print_command", metavar="ACTION", parser_class=type(p))
    test = actions.add_parser("test", parents=[common], help="print a test page now")
    test.set_defaults(handler=_test)
    prev = actions.add_parser(
        "preview",
        parents=[common],
        help="lay out a receipt's offers block as the printer would (text, and --png)",
    )
    prev.add_argument("result", help="CheckoutResult JSON file (or -), or a print-job payload")
    prev.add_argument("--offers", help="snapshot JSON or a JSON list of offers")
    prev.add_argument("--png", type=Path, help="also draw the paper into this PNG file")
    prev.add_argument("--profile", help="printer profile (default: the configured one)")
    prev.set_defaults(handler=_preview)
    queue = actions.add_parser("queue", parents=[common], help="print jobs not yet done")
    queue.add_argument("--all", action="store_true", help="done jobs too")
    queue.set_defaults(handler=_queue)
    retry = actions.add_parser(
        "retry", parents=[common], help="print a FAILED job again, a waiting one now"
    )
    retry.add_argument("receipt_id")
    retry.set_defaults(handler=_retry)
    p.set_defaults(handler=_no_action(p))


def _no_action(p: argparse.ArgumentParser) -> Any:
    def handler(settings: Any, args: argparse.Namespace) -> int:
        p.error("print needs an action: test, preview, queue or retry")
        return 2  # pragma: no cover - error() exits

    return handler


def _emit(args: argparse.Namespace, data: dict[str, Any], human: str) -> int:
    from tillpoint.agent.cli import write_out  # a stdout that fails is worded, not a bug

    if getattr(args, "json", False):
        write_out(json.dumps(data, ensure_ascii=False) + "\n")
    else:
        write_out(human if human.endswith("\n") else human + "\n")
    return 0


def _printer_config(settings: Any) -> Any:
    from tillpoint.printer.service import load_configs

    return load_configs(getattr(settings, "printer", {}) or {}, {}, {})[0]


def _ledger(settings: Any) -> Path:
    return Path(settings.data_dir) / "ledger.db"


def _test(settings: Any, args: argparse.Namespace) -> int:
    from tillpoint.printer.cli_support import print_test_page

    config = _printer_config(settings)
    print_test_page(config, ledger=_ledger(settings))
    where = f"{config.host}:{config.port}" if config.kind == "network" else config.device
    return _emit(
        args, {"printed": True, "printer": f"{config.kind} {where}"}, f"test page sent to {where}"
    )


def _offers_from(name: str) -> tuple[list[dict[str, Any]], tzinfo | None]:
    """The offers of a snapshot (or a bare list) and the snapshot's store time zone, in
    which the till prints the coupon's dates (a bare list: as written)."""
    from tillpoint.agent.cli import read_json

    data = read_json(name)
    zone: tzinfo | None = None
    if isinstance(data, dict) and isinstance(data.get("offers"), list):
        program = data.get("program")
        written = program.get("timezone") if isinstance(program, dict) else None
        if isinstance(program, dict) and written in (None, ""):
            written = "Europe/Moscow"  # the contract's default (§3)
        if isinstance(written, str):
            try:
                zone = ZoneInfo(written)
            except (ValueError, ZoneInfoNotFoundError):
                raise InputError(f"{name}: unknown program.timezone {written!r}") from None
        data = data["offers"]
    if not isinstance(data, list) or not all(isinstance(o, dict) for o in data):
        raise InputError(f"{name}: expected a snapshot or a JSON list of offers")
    return data, zone


def _preview(settings: Any, args: argparse.Namespace) -> int:
    from tillpoint.agent.cli import read_json
    from tillpoint.printer.cli_support import NothingToPrint, preview
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.queue import list_jobs

    result = read_json(args.result)
    if not isinstance(result, dict):
        raise InputError(f"{args.result}: expected a JSON object")
    config = _printer_config(settings)
    if args.profile:
        config = PrinterConfig(**{**config.model_dump(), "profile": args.profile})
    offers: list[dict[str, Any]] | None = None
    zone: tzinfo | None = None
    if args.offers:
        offers, zone = _offers_from(args.offers)
    elif "offers" not in result and result.get("printedOffers"):
        jobs = list_jobs(_ledger(settings), str(result.get("receiptId", "")))
        if not jobs or not isinstance(jobs[0]["payload"], dict):
            raise InputError(
                "this till queued no coupon for that receipt: give the offers with --offers"
            )
        result = jobs[0]["payload"]
    try:
        text = preview(result, offers, args.png, config, zone)
    except NothingToPrint as exc:  # an answer, not an error: this receipt has no coupon
        return _emit(args, {"text": "", "png": None}, exc.message)
    data = {"text": text, "png": str(args.png) if args.png else None}
    return _emit(args, data, text + (f"(image: {args.png})\n" if args.png else ""))


def queue_json(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """`tillpoint print queue --json`: the proto's `PrintQueueList` as `message_json`
    writes it (every field, in the proto's order, int64 as numbers), written out here:
    building the message imported protobuf, some tens of ms of a one-shot call
    (review 39, perf38/rev38i; `tests/test_review39_left39.py` holds the two equal)."""
    listed = []
    for job in jobs:
        payload = job["payload"]
        offers = payload.get("offers", []) if isinstance(payload, dict) else []
        listed.append(
            {
                "id": int(job["id"]),
                "receiptId": job["receipt_id"] or "",
                "createdAt": job["created_at"] or "",
                "state": job["state"] or "",
                "attempts": int(job["attempts"] or 0),
                "nextAttemptAt": job["next_attempt_at"] or "",
                "lastError": job["last_error"] or "",
                "printedAt": job["printed_at"] or "",
                "offers": [str(o.get("id")) for o in offers if isinstance(o, dict)],
            }
        )
    return {"jobs": listed}


def _queue(settings: Any, args: argparse.Namespace) -> int:
    from tillpoint.printer.queue import list_jobs

    listing = queue_json(list_jobs(_ledger(settings), include_done=args.all))
    lines = [
        f"{j['receiptId']:<24} {j['state']:<8} attempts {j['attempts']:<3} {j['lastError']}"
        for j in listing["jobs"]
    ]
    lines = [line.rstrip() for line in lines]
    human = "\n".join(lines) if lines else "the print queue is empty"
    return _emit(args, listing, human)


def _retry(settings: Any, args: argparse.Namespace) -> int:
    from tillpoint.agent.limits import is_utf8_text
    from tillpoint.printer.queue import list_jobs, requeue

    if not is_utf8_text(args.receipt_id):  # a script's other bytes: bad input (§10)
        raise InputError("print retry: receiptId is not UTF-8 text")
    if not requeue(_ledger(settings), args.receipt_id):
        # the job on its way is not put back (review 37: "no failed, held or printed job"
        # of a job that was there): what it is doing, in plain words
        doing = {
            "PENDING": "is queued and not tried yet: the running agent prints it",
            "SENDING": "is being sent to the printer now: not queued again",
        }
        for job in list_jobs(_ledger(settings), args.receipt_id):
            if job["state"] == "PENDING" and job["last_error"]:
                # tried, and set back to be sent again in full (a stop broke its write
                # off): not "not tried yet" (review 38, rev38c)
                raise InputError(
                    f"the print job of receipt {args.receipt_id} is queued already:"
                    f" {job['last_error']} (by the running agent, or at its next start)"
                )
            if job["state"] in doing:
                raise InputError(
                    f"the print job of receipt {args.receipt_id} {doing[job['state']]}"
                )
        raise InputError(f"no failed, held or printed job for receipt {args.receipt_id}")
    return _emit(
        args,
        {"requeued": args.receipt_id},
        f"receipt {args.receipt_id} is queued again; the running agent prints it",
    )
