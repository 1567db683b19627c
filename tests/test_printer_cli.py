"""`tillpoint print ...`, the preview, the test page, and the agent's own print jobs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tillpoint.agent.errors import InputError
from tillpoint.agent.results import Card, CheckoutResult, receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.printer.cli_support import preview, print_test_page
from tillpoint.printer.config import DisplayConfig, PrinterConfig
from tillpoint.printer.errors import PrinterConfigError, PrinterError
from tillpoint.printer.queue import PrintWorker
from tillpoint.printer.service import Devices, load_configs
from tillpoint.printer.virtual import VirtualPrinter

from .conftest import CLI, receipt, receipt_time, snapshot

OFFERS = [
    {
        "id": "o-1",
        "printText": "−15% на молоко",
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2026-11-30T23:59:59+03:00",
    },
    {"id": "o-2", "printText": "Кофе в подарок", "validTo": "2026-12-07T23:59:59+03:00"},
]
RESULT = {
    "receiptId": "s1-t1-000123",
    "card": {"status": "FOUND", "customerId": "c-1", "tier": "gold", "firstName": "Анна"},
    "printedOffers": ["o-2", "o-1"],
}


@pytest.fixture
def printer() -> Iterator[VirtualPrinter]:
    with VirtualPrinter() as vp:
        yield vp


def test_preview_lays_out_the_printed_offers_in_order_with_a_png(tmp_path: Path) -> None:
    png = tmp_path / "coupon.png"
    text = preview(RESULT, OFFERS, png)
    lines = text.splitlines()
    assert lines[0].strip() == "ВАШИ ПРЕДЛОЖЕНИЯ" and lines[1].strip() == "Анна, ждём вас снова!"
    assert text.index("Кофе в подарок") < text.index("-15% на молоко")
    assert "[QR: TP1-o-2]" in text and "Действует по 07.12.2026" in text
    assert all(len(line) <= 48 for line in lines)
    with Image.open(png) as img:
        assert img.width == 576 + 32 and img.height > 600


def test_preview_on_58mm_with_barcodes(tmp_path: Path) -> None:
    text = preview(RESULT, OFFERS, None, PrinterConfig(profile="generic-58mm", code="barcode"))
    assert "[CODE128: TP1-o-1]" in text
    assert all(len(line) <= 32 for line in text.splitlines())


def test_preview_refuses_what_it_cannot_show() -> None:
    with pytest.raises(InputError, match="o-2 is in printedOffers"):
        preview(RESULT, OFFERS[:1])
    with pytest.raises(InputError, match="nothing to preview"):
        preview({"receiptId": "r"}, [])
    with pytest.raises(InputError, match="receiptId"):
        preview({"printedOffers": ["o-1"]}, OFFERS)


def test_test_page_prints_on_a_network_printer(printer: VirtualPrinter) -> None:
    print_test_page(PrinterConfig(kind="network", host="127.0.0.1", port=printer.port))
    [doc] = printer.wait_for(1)
    assert doc.complete and doc.codes == ["TP1-TEST"]
    assert "ТЕСТОВАЯ СТРАНИЦА" in doc.text and "Кодовая страница: CP866 (ESC t 17)" in doc.text
    assert "Съешь же ещё этих мягких французских булок" in doc.text
    assert "Українська: Ганок, Iван, їжак, Євген." in doc.text


def test_test_page_says_why_it_could_not_print(printer: VirtualPrinter) -> None:
    printer.paper = "out"
    with pytest.raises(PrinterError, match="out of paper"):
        print_test_page(PrinterConfig(kind="network", host="127.0.0.1", port=printer.port))
    printer.stop()
    with pytest.raises(PrinterError, match="not reachable"):
        print_test_page(PrinterConfig(kind="network", host="127.0.0.1", port=printer.port))


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_cli_print_commands(cli: CLI, tmp_path: Path, printer: VirtualPrinter) -> None:
    config = tmp_path / "tillpoint.toml"
    config.write_text(f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {printer.port}\n')
    run = cli("--config", config, "print", "test", "--json")
    assert (run.code, run.json()) == (
        0,
        {"printed": True, "printer": f"network 127.0.0.1:{printer.port}"},
    )
    run = cli("print", "preview", RESULT, "--offers", {"offers": OFFERS}, "--json")
    assert run.code == 0 and run.err == ""
    assert "[QR: TP1-o-1]" in run.json()["text"]
    run = cli("print", "preview", RESULT, "--offers", OFFERS, "--profile", "nope")
    assert run.code == 2 and run.err.startswith("tillpoint: unknown printer profile 'nope'")
    run = cli("--config", write(tmp_path / "bad.toml", {}).with_suffix(".toml"), "print", "test")
    assert run.code == 2


def test_cli_rejects_a_bad_printer_table(cli: CLI, tmp_path: Path) -> None:
    config = tmp_path / "tillpoint.toml"
    config.write_text('[printer]\nkind = "network"\nprot = 9100\n')
    run = cli("--config", config, "print", "test")
    assert run.code == 2 and run.err.count("\n") == 1
    assert run.err.startswith("tillpoint: config [printer")


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ('profile = "NoSuchPrinter"', "unknown printer profile 'NoSuchPrinter'"),
        ('profile = "TM-U220"', "has no CP866 code table"),
    ],
)
def test_config_check_refuses_a_printer_profile_run_refuses(
    cli: CLI, tmp_path: Path, extra: str, says: str
) -> None:
    """`config check` said "configuration is valid" for a profile `run` then refused (exit
    2): it never resolved the profile. It does now, as `run` does."""
    config = tmp_path / "tillpoint.toml"
    table = f'[printer]\nkind = "network"\nhost = "127.0.0.1"\n{extra}\n'
    config.write_text(table, encoding="utf-8")
    run = cli("--config", config, "config", "check")
    assert run.code == 2 and run.err.count("\n") == 1 and says in run.err, run
    with pytest.raises(PrinterConfigError, match=says):  # what `run` says, from the same check
        Devices(tmp_path / "ledger.db", *load_configs(tomllib.loads(table)["printer"], {}, {}))
    config.write_text(table + "codepage_table = 17\n", encoding="utf-8")
    if "TM-U220" in extra:  # the slot given: both accept it
        assert cli("--config", config, "config", "check").code == 0
    # no printer: the profile is not looked at, as `run` does not
    config.write_text(f'[printer]\nkind = "none"\n{extra}\n', encoding="utf-8")
    assert cli("--config", config, "config", "check").code == 0


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("127.0.0.1:9100", 'carries a port: write the host alone, host = "127.0.0.1", and port'),
        ("192.168.1. 50", "is not a host name or an IP address"),
        ("tcp://192.168.1.50", "is not a host name or an IP address"),
    ],
)
def test_a_printer_host_the_connection_cannot_take_is_refused(
    cli: CLI, tmp_path: Path, host: str, says: str
) -> None:
    """A host such as "127.0.0.1:9100", or one with a blank, passed the check, and the
    printer was "not reachable" for ever after; refused when the configuration is read."""
    config = tmp_path / "tillpoint.toml"
    config.write_text(f'[printer]\nkind = "network"\nhost = "{host}"\n', encoding="utf-8")
    run = cli("--config", config, "config", "check")
    assert run.code == 2 and run.err.count("\n") == 1 and says in run.err, run
    for fine in (
        "192.168.1.50",
        "::1",
        "fe80::1%eth0",
        "printer-1.shop.local",
        "prn.shop.example.",
        "PRN_01",
    ):
        assert PrinterConfig(kind="network", host=fine).host == fine


@pytest.mark.parametrize(
    ("table", "device"),
    [
        ("display", "socket://127.0.0.1:notaport"),
        ("display", "socket://127.0.0.1"),
        ("scanner", "rfc2217://127.0.0.1:99999"),
        ("printer", "socket://:9100"),
    ],
)
def test_a_serial_url_without_host_and_port_is_refused(
    cli: CLI, tmp_path: Path, table: str, device: str
) -> None:
    """pyserial's words for "socket://127.0.0.1:notaport" were "Could not open port ...:
    'debug|info|warning|error'", at every reconnect; the check names what is expected."""
    config = tmp_path / "tillpoint.toml"
    config.write_text(f'[{table}]\nkind = "serial"\ndevice = "{device}"\n', encoding="utf-8")
    run = cli("--config", config, "config", "check")
    assert run.code == 2 and run.err.count("\n") == 1, run
    assert f"{table} device '{device}': expected " in run.err and "HOST:PORT" in run.err
    for fine in ("socket://127.0.0.1:9000", "rfc2217://till:7000?timeout=1", "loop://"):
        assert DisplayConfig(kind="serial", device=fine).device == fine


def test_the_agents_checkout_job_prints_and_can_be_previewed_and_requeued(
    agent: Agent, cli: CLI, printer: VirtualPrinter, tmp_path: Path
) -> None:
    offer = {
        "id": "o-1",
        "campaignId": "camp-3",
        "customerId": "c-a",
        "kind": "PERCENT_OFF",
        "skus": ["4601234000017"],
        "categories": [],
        "value": "15",
        "minQty": "1",
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2026-11-30T23:59:59+03:00",
        "priority": 10,
        "rank": 1,
        "printable": True,
        "printText": "−15% на молоко",
    }
    agent.load_snapshot(snapshot(version=2, offers=[offer]))
    result = agent.checkout(receipt_from_json(receipt("s1-t1-000777")))
    assert result.to_json()["printedOffers"] == ["o-1"]
    ledger = agent.data_dir / "ledger.db"
    cfg = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port)
    worker = PrintWorker(ledger, cfg, clock=receipt_time)  # not today: the offer ends
    worker.run_once()
    [doc] = printer.wait_for(1)
    assert doc.codes == ["TP1-o-1"] and "Анна, ждём вас снова!" in doc.text
    assert "Чек s1-t1-000777, 23.11.2026 10:15" in doc.text
    worker.close()

    data_dir = ["--data-dir", str(agent.data_dir)]
    run = cli(*data_dir, "print", "preview", result, "--json")  # offers from the queued job
    assert run.code == 0 and "Анна, ждём вас снова!" in run.json()["text"]
    run = cli(*data_dir, "print", "queue", "--all", "--json")
    [job] = run.json()["jobs"]
    assert (job["receiptId"], job["state"], job["offers"]) == ("s1-t1-000777", "DONE", ["o-1"])
    assert "receipt_id" not in job and isinstance(job["attempts"], int)
    assert cli(*data_dir, "print", "retry", "s1-t1-000777").code == 0
    assert cli(*data_dir, "print", "retry", "nope").code == 2


def test_devices_wire_display_and_printer(tmp_path: Path, printer: VirtualPrinter) -> None:
    import sqlite3

    from tillpoint.printer.queue import enqueue, ensure_schema

    ledger = tmp_path / "ledger.db"
    conn = sqlite3.connect(ledger, isolation_level=None)
    ensure_schema(conn)
    p, d, s = load_configs(
        {"kind": "network", "host": "127.0.0.1", "port": printer.port, "poll_interval_s": 30},
        {"kind": "serial", "device": str(tmp_path / "no-display")},
        {},
    )
    devices = Devices(ledger, p, d, s)
    devices.start()
    try:
        enqueue(conn, {"receiptId": "r-9", "offers": [{"id": "o-1", "text": "Подарок"}]})
        devices.after_checkout(
            CheckoutResult(
                "r-9", Card("UNKNOWN"), "OFFLINE", (), 0, 0, 0, 0, 0, None, (), ("o-1",),
                display=("Начислено: +5", "Бонусы: 10"),
            )
        )  # fmt: skip
        assert printer.wait_for(1, timeout_s=5)
        status = devices.status()
        assert status["display"]["state"] == "OFFLINE" and status["scanner"]["state"] == "DISABLED"
        assert status["display"]["lines"] == ["Начислено: +5", "Бонусы: 10"]
    finally:
        devices.stop()
        conn.close()


def test_importing_escpos_leaves_stdout_and_tmp_clean(tmp_path: Path) -> None:
    tmp, cache = tmp_path / "tmp", tmp_path / "cache"
    tmp.mkdir()
    result = write(tmp_path / "result.json", RESULT)
    offers = write(tmp_path / "offers.json", OFFERS)
    env = {**os.environ, "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(cache)}
    env.pop("TILLPOINT_CACHE_DIR", None)
    code = (
        "import sys; from tillpoint.agent.cli import main; "
        f"sys.exit(main(['--data-dir', {str(tmp_path / 'd')!r}, 'print', 'preview', "
        f"{str(result)!r}, '--offers', {str(offers)!r}, '--json']))"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "[QR: TP1-o-1]" in json.loads(proc.stdout)["text"]
    assert list(tmp.iterdir()) == []  # escpos made no temporary directory
    assert list((cache / "tillpoint" / "escpos").iterdir())  # its pickle went to the cache
    assert time.monotonic() - started < 30
