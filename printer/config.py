"""Configuration of the receipt printer, the customer display and the card scanner.

The agent's configuration file embeds these models as its ``[printer]``, ``[display]`` and
``[scanner]`` tables, for example::

    [printer]
    kind = "network"          # network | serial | usb | file | none
    host = "192.168.1.50"
    profile = "generic-80mm"  # or "generic-58mm", or a python-escpos profile such as "TM-T20II"
    codepage = "cp866"        # the Python codec of the printer's code table
    codepage_table = 17       # its ESC t n slot (vendor-specific; default: from the profile)

    [display]
    kind = "serial"
    device = "/dev/ttyUSB0"
    command_set = "epson"     # epson | cd5220

    [scanner]
    kind = "serial"
    device = "/dev/ttyACM0"

Every model rejects unknown keys, so a typo is an error and not a silently ignored setting.
All timeouts are in seconds and every one of them is finite: nothing here can block forever.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = [
    "DisplayConfig",
    "PrinterConfig",
    "ScannerConfig",
    "check_single_byte_codec",
]


def _parse_int(value: Any) -> Any:
    """Accept USB ids written as hex strings ("0x04b8") as well as integers."""
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return int(text, 16) if text.startswith("0x") else int(text)
        except ValueError:
            return value
    return value


UsbId = Annotated[int, BeforeValidator(_parse_int), Field(ge=0, le=0xFFFF)]


def _stopbits_text(value: Any) -> Any:
    """The environment's "2" (`TILLPOINT_PRINTER__STOPBITS=2`, text by nature) as 2: a
    Literal takes no text, and no stop bits could be set but in the TOML file."""
    return int(value) if isinstance(value, str) and value.strip() in ("1", "2") else value


StopBits = Annotated[Literal[1, 2], BeforeValidator(_stopbits_text)]
Seconds = Annotated[float, Field(gt=0, le=3600)]


@lru_cache(maxsize=32)
def check_single_byte_codec(name: str) -> str:
    """Return the canonical Python name of a single-byte codec, or raise ValueError."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise ValueError(
            f"unknown code page {name!r} (use a Python codec name such as cp866)"
        ) from None
    ascii_ok = _encodes(info.name, "AZaz09 ~") and "AZaz09 ~".encode(info.name) == b"AZaz09 ~"
    multibyte = info.name.startswith(("utf", "mbcs")) or any(
        _encodes(info.name, ch)
        for ch in "\u3042\u4e2d\ud55c"  # CJK: only multi-byte codecs
    )
    if not ascii_ok or multibyte:
        raise ValueError(f"code page {name!r} is not a single-byte ASCII-compatible code page")
    return info.name


def _encodes(codec: str, ch: str) -> bool:
    try:
        ch.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return True


# A host name, with the trailing dot of a fully qualified one if written so.
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
# A name whose last label is a number (decimal, or hex as "0x7f"): no host name is (RFC
# 1123 §2.1), and the C library's resolver reads it as an IPv4 address in the old forms
# `ipaddress` refuses: "192.168.001.050" is 192.168.1.40 (octal), "192.168.1" 192.168.0.1.
_NUMBER_LAST = re.compile(r"(?:.*\.)?(?:[0-9]+|0[xX][0-9A-Fa-f]*)\.?")


def _check_host(host: str) -> None:
    """A host name or an IP address, as the connection takes it: "127.0.0.1:9100" or a
    name with a blank passed the check and the printer was "not reachable" for ever; a
    number that only looks like an address ("192.168.001.050") reached another device
    (review 59, mut59c)."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    name, _, port = host.rpartition(":")
    if port.isascii() and port.isdigit() and _HOST_NAME.fullmatch(name):
        raise ValueError(
            f"printer host {host!r} carries a port: write the host alone, "
            f'host = "{name}", and port = {int(port)}'
        )
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(
            f"printer host {host!r} is not a host name or an IP address "
            "(letters, digits, '.', '-' and '_' only, no blanks)"
        )
    if _NUMBER_LAST.fullmatch(host):
        raise ValueError(
            f"printer host {host!r} is not an IP address: write four numbers 0-255 without"
            " leading zeros, such as 192.168.1.50 (a host name does not end in a number)"
        )


def _check_nul(what: str, device: str | None) -> None:
    """A device's path or URL holds no NUL (only the TOML file can write one, `\\u0000`):
    it passed `config check`, and opening it said "internal error: ValueError: embedded
    null byte", exit 1 (review 37, rev37d)."""
    if device is not None and "\x00" in device:
        raise ValueError(
            f"{what} device {device!r}: must not contain a NUL character (no path can hold one)"
        )


def _check_serial(what: str, kind: str, device: str | None) -> None:
    """A serial device (`kind` "serial") names its port, a valid one (`_check_device`)."""
    if kind != "serial":
        return
    if not device:
        raise ValueError(f'{what} kind "serial" needs device')
    _check_device(what, device)


def _check_device(what: str, device: str) -> None:
    """A pyserial network URL needs HOST:PORT; pyserial's own words for a bad one are
    "'debug|info|warning|error'" (it reads a bad port as a bad option)."""
    scheme = device.partition("://")[0].lower() if "://" in device else ""
    if scheme not in ("socket", "rfc2217"):
        return
    try:
        parts = urlsplit(device)
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if parts is None or not parts.hostname or port is None or not 0 < port < 65536:
        raise ValueError(
            f"{what} device {device!r}: expected {scheme}://HOST:PORT with a port 1-65535"
        )


class _Model(BaseModel):
    # built at first use (defer_build): a one-shot CLI call without devices never needs it
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=True, defer_build=True
    )


class PrinterConfig(_Model):
    """The ESC/POS receipt printer that prints the offers block (the contract §7)."""

    kind: Literal["network", "serial", "usb", "file", "none"] = "none"
    # network: raw TCP ("JetDirect", port 9100)
    host: str | None = None
    port: int = Field(9100, ge=1, le=65535)
    # serial: a device path or any pyserial URL (loop://, socket://host:port, rfc2217://...);
    # file: a file or a device node such as /dev/usb/lp0
    device: str | None = None
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: StopBits = 1
    flow_control: Literal["none", "rtscts", "dsrdtr", "xonxoff"] = "none"
    # usb (python-escpos Usb, needs pyusb)
    usb_vendor_id: UsbId | None = None
    usb_product_id: UsbId | None = None
    usb_in_ep: int = Field(0x82, ge=0, le=0xFF)
    usb_out_ep: int = Field(0x01, ge=0, le=0xFF)
    # layout
    profile: str = "generic-80mm"
    columns: int | None = Field(None, ge=16, le=96)
    width_px: int | None = Field(None, ge=128, le=2048)
    codepage: str = "cp866"
    codepage_table: int | None = Field(None, ge=0, le=255)
    code: Literal["auto", "qr", "barcode", "raster-qr", "text"] = "auto"
    qr_module_px: int = Field(6, ge=1, le=16)
    cut: Literal["full", "partial", "none"] = "partial"
    heading: str = Field("ВАШИ ПРЕДЛОЖЕНИЯ", max_length=96)
    # timeouts and the queue
    connect_timeout_s: Seconds = 3.0
    write_timeout_s: Seconds = 10.0
    status_timeout_s: Seconds = 0.5
    confirm_timeout_s: Seconds = 10.0
    query_status: bool = True
    confirm: bool = True
    retry_base_s: Seconds = 1.0
    retry_max_s: Seconds = 60.0
    poll_interval_s: Seconds = 2.0
    # an age, not a timeout: up to a week (the timeouts' hour refused "no coupon from
    # yesterday", 86400, while no limit at all was taken; review 59, mut59c)
    max_job_age_s: float | None = Field(None, gt=0, le=7 * 86400)
    # a job the printer drops this many times while sending or confirming it (connected,
    # the printer otherwise reachable: too big for it, a byte it rejects) becomes FAILED,
    # so the jobs behind it print (`tillpoint print retry` prints it again)
    max_send_failures: int = Field(5, ge=1, le=1000)
    # An idle printer is asked how it is this often (and at start), so `status` shows a
    # printer unplugged while no job waits; 0: never (only jobs find out).
    probe_interval_s: float = Field(60.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _check(self) -> PrinterConfig:
        if self.kind == "network" and not self.host:
            raise ValueError('printer kind "network" needs host')
        if self.kind == "network" and self.host:
            _check_host(self.host)
        if self.kind == "file" and not self.device:
            raise ValueError('printer kind "file" needs device')
        _check_nul("printer", self.device)
        _check_serial("printer", self.kind, self.device)
        if self.kind == "usb" and (self.usb_vendor_id is None or self.usb_product_id is None):
            raise ValueError('printer kind "usb" needs usb_vendor_id and usb_product_id')
        check_single_byte_codec(self.codepage)
        if self.retry_max_s < self.retry_base_s:
            raise ValueError("retry_max_s must not be below retry_base_s")
        return self


class DisplayConfig(_Model):
    """A 2 × 20 VFD/LCD pole display on a serial port (the contract §8)."""

    kind: Literal["serial", "none"] = "none"
    device: str | None = None
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: StopBits = 1
    command_set: Literal["epson", "cd5220"] = "epson"
    columns: int = Field(20, ge=8, le=40)
    rows: int = Field(2, ge=1, le=4)
    codepage: str = "cp866"
    # epson: the ESC t n slot of the code table; cd5220: the ESC f n international set (a letter)
    codepage_table: int = Field(17, ge=0, le=255)
    cd5220_charset: str = Field("R", min_length=1, max_length=1)
    brightness: int = Field(4, ge=1, le=4)
    write_timeout_s: Seconds = 0.5
    reconnect_s: Seconds = 2.0
    refresh_s: Seconds = 30.0

    @model_validator(mode="after")
    def _check(self) -> DisplayConfig:
        _check_nul("display", self.device)
        _check_serial("display", self.kind, self.device)
        check_single_byte_codec(self.codepage)
        # a letter names a CD5220 set (R: Russia); ESC or NUL went out as the n of ESC f n
        # (review 59, mut59c)
        if not (self.cd5220_charset.isascii() and self.cd5220_charset.isalpha()):
            raise ValueError("cd5220_charset must be one ASCII letter")
        return self


class ScannerConfig(_Model):
    """A serial barcode/card scanner on a self-service kiosk (the contract §4 input)."""

    kind: Literal["serial", "none"] = "none"
    device: str | None = None
    baudrate: int = Field(9600, ge=300, le=921600)
    encoding: str = "utf-8"
    read_timeout_s: Seconds = 0.2
    reconnect_s: Seconds = 2.0
    max_length: int = Field(128, ge=8, le=4096)
    # scanners set up without a CR/LF suffix: a pause this long ends a scan
    idle_flush_s: Seconds | None = None

    @model_validator(mode="after")
    def _check(self) -> ScannerConfig:
        _check_nul("scanner", self.device)
        _check_serial("scanner", self.kind, self.device)
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown scanner encoding {self.encoding!r}") from None
        try:  # as the reader decodes a scan: "hex" or "undefined" are codecs, and no text's
            read = _SCAN.decode(self.encoding, errors="replace")
        except (LookupError, UnicodeError):
            raise ValueError(
                f"scanner encoding {self.encoding!r} cannot decode a scan"
                " (use a text encoding such as utf-8 or cp1251)"
            ) from None
        if read != _SCAN.decode("ascii"):
            # the reader ends a scan at the byte CR or LF: "utf-16" read the first scan and
            # then "㐀㘀㈀…" for ever, EBCDIC's "cp037" (a slip for cp437) no digit at all
            # (review 59, mut59e)
            raise ValueError(
                f"scanner encoding {self.encoding!r} does not read a scan's digits and"
                " Latin letters as the ASCII bytes a scanner sends"
                " (use a text encoding such as utf-8 or cp1251)"
            )
        return self


# What a scanner sends, in ASCII in every encoding a scanner is set to: a barcode, a
# card's number, a phone, a coupon's code (`TP1-...`).
_SCAN = b"2770000000017 +7 916 123-45-67 TP1-o-1 ABCXYZ abcxyz 0123456789 ./:"
