"""Review 56 (mut56b): the sync client's state and the printer's description of itself
(the contract §4, §7, §9; docs/PROTOCOL.md §5).

Mutation testing of `sync/state.py`, `printer/codes.py`, `printer/profiles.py` and
`printer/_escpos.py` left these rules held by no test: what `status` makes of the sync's
own tables (each field's default, the newest outstanding error, an error cleared, the
set-aside transactions, a damaged value read without a traceback, the certificate's
expiry), the offer code's escaping and its scan back, the profiles' widths, code tables
and drawing modes, and the quiet import of python-escpos. Real parts: a till's real
`ledger.db` (opened by `open_ledger`), `tillpoint status --json` (in-process CLI), the
hub's keys and a till's certificate made by `sync.pki`, python-escpos's own capability
database and its `Dummy` printer, `tillpoint` subprocesses for what an import leaves."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.service import Agent
from tillpoint.printer.codes import offer_code, parse_offer_code
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.errors import PrinterConfigError
from tillpoint.printer.profiles import Profile, resolve_profile
from tillpoint.sync import pki
from tillpoint.sync.state import error_value, get, open_ledger, put, set_error, sync_status

from .conftest import CLI

# ---------------------------------------------------------------- sync/state.py


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A till's real ledger.db, migrated, as the sync thread opens it."""
    (tmp_path / "data").mkdir()
    conn = open_ledger(tmp_path / "data")
    yield conn
    conn.close()


def _at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 7, hour, minute, tzinfo=UTC)


def _set_aside(conn: sqlite3.Connection, seq: int, outcome: str, reason: str, at: str) -> None:
    """A row as `ledger.settle_push` writes it for a CONFLICT or REJECTED answer."""
    conn.execute(
        "INSERT INTO sync_set_aside VALUES ('till-1', ?, '{}', ?, ?, ?)", (seq, outcome, reason, at)
    )


def test_a_fresh_tills_status_says_offline_and_nothing_outstanding(cli: CLI) -> None:
    """What support reads of a till that never reached a hub: OFFLINE, no times, no error,
    nothing set aside or numbered again, not enrolled; no refusal or renumbering (null)."""
    status = cli("status", "--json").json()
    assert {k: status[k] for k in _SYNC_DEFAULTS} == _SYNC_DEFAULTS
    assert (status["lastRefusedSnapshot"], status["lastRenumbered"]) == (None, None)


_SYNC_DEFAULTS = {
    "mode": "OFFLINE",
    "lastPullAt": "",
    "lastPushAt": "",
    "lastError": "",
    "lastErrorAt": "",
    "lastContactAt": "",
    "hubAddress": "",
    "hubAckedThroughSeq": 0,
    "setAsideTransactions": 0,
    "setAside": 0,
    "syncError": "",
    "enrolled": False,
    "certificateExpiresAt": "",
    "renumberedTransactions": 0,
}


def test_a_database_without_the_sync_tables_reads_as_the_defaults(tmp_path: Path) -> None:
    """`sync_status` is safe on any ledger connection and `get` on any: a database the
    sync's migration never touched has nothing recorded (not an error, not one set aside)."""
    conn = sqlite3.connect(tmp_path / "other.db")
    try:
        conn.execute("CREATE TABLE t (x)")
        assert get(conn, "mode") is None
        status = sync_status(conn)
    finally:
        conn.close()
    assert {k: status[k] for k in _SYNC_DEFAULTS} == _SYNC_DEFAULTS


def test_put_sets_replaces_and_deletes_keys_and_get_reads_them(
    ledger: sqlite3.Connection,
) -> None:
    assert get(ledger, "mode") is None
    put(ledger, {"mode": "ONLINE", "last_pull_at": "2026-12-07T10:00:00Z"})
    assert (get(ledger, "mode"), get(ledger, "last_pull_at")) == ("ONLINE", "2026-12-07T10:00:00Z")
    put(ledger, {"mode": "OFFLINE", "last_pull_at": None})
    assert (get(ledger, "mode"), get(ledger, "last_pull_at")) == ("OFFLINE", None)
    assert ledger.execute("SELECT count(*) FROM sync_state").fetchone()[0] == 1


def test_put_writes_all_its_keys_or_none(ledger: sqlite3.Connection) -> None:
    """One transaction: a value SQLite cannot store leaves the keys before it unwritten,
    and the connection with no transaction open (the next write works)."""
    with pytest.raises(sqlite3.Error):
        put(ledger, {"mode": "ONLINE", "last_push_at": object()})  # type: ignore[dict-item]
    assert get(ledger, "mode") is None
    assert not ledger.in_transaction
    put(ledger, {"mode": "ONLINE"})
    assert get(ledger, "mode") == "ONLINE"


def test_an_error_is_recorded_with_its_time_readable_and_cleared_by_none(
    ledger: sqlite3.Connection,
) -> None:
    """`set_error` records the message and when, as UTF-8 words a support engineer reads
    with the sqlite3 shell (not \\u escapes); `status` says it; None clears it."""
    set_error(ledger, "push", "push: хаб отказал")
    raw = get(ledger, "error:push")
    assert raw is not None and "хаб отказал" in raw
    recorded = json.loads(raw)
    assert recorded["message"] == "push: хаб отказал"
    status = sync_status(ledger)
    assert (status["lastError"], status["syncError"]) == ("push: хаб отказал",) * 2
    assert status["lastErrorAt"] == recorded["at"] and recorded["at"].endswith("Z")
    set_error(ledger, "push", None)
    assert get(ledger, "error:push") is None
    status = sync_status(ledger)
    assert (status["lastError"], status["lastErrorAt"], status["syncError"]) == ("", "", "")


def test_error_value_is_the_message_and_the_moment_in_utc() -> None:
    value = json.loads(error_value("pull: refused", _at(10, 5)))
    assert value == {"message": "pull: refused", "at": "2026-12-07T10:05:00.000000Z"}


def test_the_newest_outstanding_error_is_the_last_error_and_a_cleared_one_gives_way(
    ledger: sqlite3.Connection,
) -> None:
    """Of the areas' errors the newest is `lastError` whichever area it is; once that area
    works again the next newest shows (review 56: the oldest or the first area shown
    passed no test)."""
    put(
        ledger,
        {
            "error:enrollment": error_value("enrollment: old", _at(8)),
            "error:link": error_value("the hub is unreachable", _at(11)),
            "error:pull": error_value("pull: refused", _at(10)),
            "error:push": error_value("push: failed", _at(9)),
        },
    )
    status = sync_status(ledger)
    assert (status["lastError"], status["lastErrorAt"]) == (
        "the hub is unreachable",
        "2026-12-07T11:00:00.000000Z",
    )
    assert status["syncError"] == "the hub is unreachable"
    set_error(ledger, "link", None)
    assert sync_status(ledger)["lastError"] == "pull: refused"


def test_an_error_value_that_is_no_json_is_said_as_it_is_and_counts_oldest(
    ledger: sqlite3.Connection,
) -> None:
    """A value of an older release or a hand edit: said as it is, with no time, below any
    dated error; an empty one is no error."""
    put(ledger, {"error:pull": "pull failed", "error:push": ""})
    status = sync_status(ledger)
    assert (status["lastError"], status["lastErrorAt"]) == ("pull failed", "")
    put(ledger, {"error:link": error_value("the hub is unreachable", _at(9))})
    assert sync_status(ledger)["lastError"] == "the hub is unreachable"
    put(ledger, {"error:link": None, "error:pull": None})
    assert sync_status(ledger)["lastError"] == ""


@pytest.mark.parametrize("raw", ["null", '"fixed"', "[1, 2]", "5", '{"message": "m"}'])
def test_an_error_value_that_is_json_but_no_error_is_said_as_it_is(
    ledger: sqlite3.Connection, raw: str
) -> None:
    """Until review 56 a value that read as JSON but not as an object of a message and a
    time (a hand edit, a damaged ledger) made `tillpoint status` an internal error
    (TypeError): support could not see the till at all."""
    put(ledger, {"error:pull": raw})
    status = sync_status(ledger)
    assert (status["lastError"], status["lastErrorAt"]) == (raw, "")


@pytest.mark.parametrize("raw", ["x", "", "-1", "٣"])
def test_a_hub_mark_or_count_that_does_not_read_is_zero(
    ledger: sqlite3.Connection, raw: str
) -> None:
    """`hubAckedThroughSeq` failed `status` on a value that is no number (ValueError, an
    internal error; review 56); `renumberedTransactions` already read such a one as 0."""
    put(ledger, {"acked_through": raw, "renumbered": raw})
    status = sync_status(ledger)
    assert (status["hubAckedThroughSeq"], status["renumberedTransactions"]) == (0, 0)


def test_the_recorded_times_mode_and_hub_mark_are_said(ledger: sqlite3.Connection) -> None:
    put(
        ledger,
        {
            "mode": "ONLINE",
            "last_pull_at": "2026-12-07T10:00:00Z",
            "last_push_at": "2026-12-07T10:01:00Z",
            "last_contact_at": "2026-12-07T10:02:00Z",
            "hub_address": "hub.shop:7443",
            "acked_through": "41",
        },
    )
    status = sync_status(ledger)
    assert {k: status[k] for k in _RECORDED} == _RECORDED


_RECORDED = {
    "mode": "ONLINE",
    "lastPullAt": "2026-12-07T10:00:00Z",
    "lastPushAt": "2026-12-07T10:01:00Z",
    "lastContactAt": "2026-12-07T10:02:00Z",
    "hubAddress": "hub.shop:7443",
    "hubAckedThroughSeq": 41,
}


def test_set_aside_transactions_are_counted_and_the_newest_named(
    ledger: sqlite3.Connection,
) -> None:
    """Each set-aside row counts (`setAside`, and the deprecated `setAsideTransactions`);
    `syncError` names the newest by time, then by seq, with the hub's reason when it gave
    one; they do not clear by themselves."""
    _set_aside(ledger, 3, "REJECTED", "amount is negative", "2026-12-07T09:00:00Z")
    status = sync_status(ledger)
    assert (status["setAside"], status["setAsideTransactions"]) == (1, 1)
    assert status["syncError"] == (
        "1 transaction(s) set aside by the hub (newest: seq 3 REJECTED: amount is negative);"
        " see sync_set_aside in ledger.db"
    )
    assert status["lastError"] == status["syncError"]
    _set_aside(ledger, 7, "CONFLICT", "", "2026-12-07T10:00:00Z")
    _set_aside(ledger, 5, "CONFLICT", "other", "2026-12-07T10:00:00Z")
    status = sync_status(ledger)
    assert (status["setAside"], status["setAsideTransactions"]) == (3, 3)
    assert status["syncError"] == (
        "3 transaction(s) set aside by the hub (newest: seq 7 CONFLICT);"
        " see sync_set_aside in ledger.db"
    )


def test_refusal_and_renumbering_records_are_said_and_damaged_ones_left_out(
    ledger: sqlite3.Connection,
) -> None:
    """`lastRefusedSnapshot` and `lastRenumbered` as recorded (JSON); a damaged record or
    count is left out or 0, never a traceback in `status`."""
    refused = {"version": 12, "reason": "signature"}
    last = {"oldSeq": 4, "newSeq": 9, "receiptId": "r-4"}
    put(
        ledger,
        {
            "refused": json.dumps(refused),
            "renumbered": "2",
            "renumbered_last": json.dumps(last),
        },
    )
    status = sync_status(ledger)
    assert status["lastRefusedSnapshot"] == refused
    assert (status["renumberedTransactions"], status["lastRenumbered"]) == (2, last)
    put(ledger, {"refused": "{cut", "renumbered": "x2", "renumbered_last": "{cut"})
    status = sync_status(ledger)
    assert "lastRefusedSnapshot" not in status and "lastRenumbered" not in status
    assert status["renumberedTransactions"] == 0


def _device_certificate(tmp_path: Path) -> tuple[bytes, str]:
    """A till's certificate from a hub CA made here, and its expiry as status says it."""
    keys = pki.HubKeys(tmp_path / "hub" / "keys")
    pki.init_hub_keys(keys)
    made = pki.issue_device(keys, "till-1")
    return made.cert_pem, pki.certificate_time(made.not_after)


def test_the_certificates_expiry_is_the_markers_else_the_certificates(
    tmp_path: Path, ledger: sqlite3.Connection
) -> None:
    """`certificateExpiresAt`: the marker's field; a marker of an older release without
    it (or not an object), the certificate's own date; "" for a marker that does not read
    or a certificate missing — `status` never fails on them."""
    enrollment = tmp_path / "data" / "enrollment"
    enrollment.mkdir()
    marker = enrollment / "enrollment.json"
    marker.write_text(json.dumps({"certificateExpiresAt": "2031-01-02T03:04:05Z"}))
    status = sync_status(ledger)
    assert (status["enrolled"], status["certificateExpiresAt"]) == (True, "2031-01-02T03:04:05Z")
    marker.write_text("{}")
    assert sync_status(ledger)["certificateExpiresAt"] == ""  # no device.pem
    pem, expires = _device_certificate(tmp_path)
    (enrollment / "device.pem").write_bytes(pem)
    assert sync_status(ledger)["certificateExpiresAt"] == expires
    marker.write_text("[]")
    assert sync_status(ledger)["certificateExpiresAt"] == expires
    marker.write_text("{cut")
    status = sync_status(ledger)
    assert (status["enrolled"], status["certificateExpiresAt"]) == (True, "")


def test_a_connection_to_no_file_is_not_enrolled_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-memory database has no data directory: not the process's working directory,
    even when that is an enrolled till's."""
    enrollment = tmp_path / "enrollment"
    enrollment.mkdir()
    (enrollment / "enrollment.json").write_text(json.dumps({"certificateExpiresAt": "2031"}))
    monkeypatch.chdir(tmp_path)
    conn = sqlite3.connect(":memory:")
    try:
        status = sync_status(conn)
    finally:
        conn.close()
    assert (status["enrolled"], status["certificateExpiresAt"]) == (False, "")


def test_an_outage_after_a_set_aside_is_the_last_error_and_the_set_aside_stays_the_sync_error(
    ledger: sqlite3.Connection,
) -> None:
    """`lastError` is the newest outstanding problem (docs/PROTOCOL.md §5), `syncError`
    the set-aside transactions first. Until review 56 a set-aside row, which stays until a
    person reviews it, was `lastError` for good with `lastErrorAt` "": a later outage's
    cause (an expired certificate with the way back, the hub unreachable) never showed
    in `status`. Now the set-aside problem stands at its newest row's time."""
    _set_aside(ledger, 3, "CONFLICT", "seq taken", "2026-12-07T09:00:00.000000Z")
    aside = (
        "1 transaction(s) set aside by the hub (newest: seq 3 CONFLICT: seq taken);"
        " see sync_set_aside in ledger.db"
    )
    status = sync_status(ledger)
    assert (status["lastError"], status["lastErrorAt"]) == (aside, "2026-12-07T09:00:00.000000Z")
    put(ledger, {"error:link": error_value("this till's certificate expired at …", _at(11))})
    status = sync_status(ledger)
    assert (status["lastError"], status["lastErrorAt"]) == (
        "this till's certificate expired at …",
        "2026-12-07T11:00:00.000000Z",
    )
    assert status["syncError"] == aside
    put(ledger, {"error:link": error_value("the hub is unreachable", _at(8))})
    status = sync_status(ledger)
    assert (status["lastError"], status["syncError"]) == (aside, aside)


# ---------------------------------------------------------------- printer/codes.py


@pytest.mark.parametrize(
    ("offer_id", "code"),
    [
        ("o-1", "TP1-o-1"),
        ("7", "TP1-7"),
        ("!A~z", "TP1-!A~z"),  # printable ASCII's ends stay as they are
        ("50%", "TP1-50%25"),  # the escape character itself is escaped
        ("o 1", "TP1-o%201"),  # a blank is not printable ASCII in a code
        ("o\x7f", "TP1-o%7F"),  # nor DEL
        ("Оффер", "TP1-%D0%9E%D1%84%D1%84%D0%B5%D1%80"),
    ],
)
def test_an_offer_code_is_printable_ascii_and_scans_back_to_its_offer(
    offer_id: str, code: str
) -> None:
    assert offer_code(offer_id) == code
    assert parse_offer_code(code) == offer_id
    assert all(0x21 <= ord(c) < 0x7F for c in code)


def test_an_offer_id_of_one_to_two_hundred_characters_has_a_code_and_no_other() -> None:
    """The snapshot's id limit: 200 characters (a Cyrillic one's code is six times as
    long, and still one QR code); none and 201 have no code, and a scan of one is none."""
    longest = "Я" * 200
    assert parse_offer_code(offer_code(longest)) == longest
    for wrong in ("", "o" * 201):
        with pytest.raises(ValueError, match="is not 1-200 characters"):
            offer_code(wrong)
    assert parse_offer_code("TP1-" + "o" * 201) is None
    assert parse_offer_code("TP1-") is None
    assert parse_offer_code("TP1-" + "o" * 200) == "o" * 200


@pytest.mark.parametrize(
    ("scanned", "offer_id"),
    [
        ("TP1-o-1\r\n", "o-1"),  # a scanner's line end
        (" tp1-o-1", "o-1"),  # a scanner sending lower case: the scheme, not the id
        ("TP1-%d0%9e", "О"),
        ("TP1-%D0", None),  # half a UTF-8 character: no offer
        ("TP1o1", None),  # the code with its dashes dropped (§4's card normalisation)
        ("TP2-o-1", None),
        ("2770000000017", None),
        ("", None),
    ],
)
def test_a_scan_names_an_offer_only_when_it_is_an_offer_code(
    scanned: str, offer_id: str | None
) -> None:
    assert parse_offer_code(scanned) == offer_id


def test_a_scanned_offer_code_is_an_offer_before_it_could_read_as_a_card(agent: Agent) -> None:
    """The till routes a scan (§13): an offer's code, tested on the raw text, names the
    offer; its dashes dropped as a card's it would be "TP1o12" (an INVALID card)."""
    assert agent.scan(" TP1-o-1-2 ").to_json() == {
        "kind": "OFFER",
        "code": "TP1-o-1-2",
        "offerId": "o-1-2",
    }
    assert agent.scan("TP1-").to_json()["kind"] == "CARD"


# ---------------------------------------------------------------- printer/profiles.py


def _profile(**config: Any) -> Profile:
    return resolve_profile(PrinterConfig(**config))


def _shape(p: Profile) -> tuple[str, int, int, int, str, int]:
    return (p.base, p.columns, p.width_px, p.dpi, p.codepage, p.codepage_table)


def test_the_generic_profiles_are_80_and_58_mm_epson_compatibles_that_draw_everything() -> None:
    """docs' table: 48 columns on 576 dots and 32 on 384, 203 dpi, CP866 at ESC t 17,
    native QR codes, hardware barcodes, raster images, both cuts."""
    wide, narrow = _profile(profile="generic-80mm"), _profile(profile="generic-58mm")
    assert _shape(wide) == ("default", 48, 576, 203, "cp866", 17)
    assert _shape(narrow) == ("default", 32, 384, 203, "cp866", 17)
    for p in (wide, narrow):
        assert (p.qr_native, p.barcode_hw, p.raster, p.full_cut, p.part_cut) == (True,) * 5
        assert p.code_modes() == ["qr", "barcode", "raster-qr", "text"]


@pytest.mark.parametrize(
    ("config", "table"),
    [
        ({"codepage": "cp1251"}, 46),  # python-escpos's slot for it on an Epson
        ({"codepage": "iso8859_7"}, 15),  # its database spells it ISO_8859-7
        ({"codepage": "IBM866"}, 17),  # another name of CP866
        ({"codepage": "cp866", "codepage_table": 59}, 59),  # a Zjiang clone
        ({"codepage": "cp1251", "codepage_table": 73}, 73),  # the configuration wins
    ],
)
def test_a_generic_profiles_code_table_is_the_codecs_slot_unless_configured(
    config: dict[str, Any], table: int
) -> None:
    assert _profile(profile="generic-80mm", **config).codepage_table == table


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("TM-T88V", ("TM-T88V", 42, 512, 180, "cp866", 17)),
        ("KR-306", ("KR-306", 48, 576, 203, "cp866", 12)),  # the lowest of 12, 37
        ("CT-S651", ("CT-S651", 48, 640, 203, "cp866", 7)),  # of 7, 17
        ("TSP600", ("TSP600", 42, 576, 203, "cp866", 10)),  # Star
        ("RP326", ("RP326", 42, 504, 203, "cp866", 7)),  # width "Unknown": 12 dots a column
        ("TUP500", ("TUP500", 42, 504, 203, "cp866", 10)),  # no width in dots at all
        ("Sunmi-V2", ("Sunmi-V2", 32, 384, 203, "cp866", 17)),  # no dpi: 384 dots is 203
        ("OCD-100", ("OCD-100", 20, 100, 180, "cp866", 11)),  # no dpi, narrower: 180
    ],
)
def test_a_python_escpos_profile_gives_its_columns_width_dpi_and_code_table(
    name: str, shape: tuple[str, int, int, int, str, int]
) -> None:
    assert _shape(_profile(profile=name)) == shape


@pytest.mark.parametrize(
    ("name", "modes", "cuts"),
    [
        ("TM-T88V", ["qr", "barcode", "raster-qr", "text"], (True, True)),
        ("TH230", ["barcode", "raster-qr", "text"], (True, True)),  # no native QR
        ("NT-5890K", ["raster-qr", "text"], (False, False)),  # a 58 mm clone, no cutter
        ("TM-U220B", ["text"], (False, True)),  # a dot-matrix printer: partial cut only
    ],
)
def test_a_printer_draws_a_code_the_best_way_its_profile_says_it_can(
    name: str, modes: list[str], cuts: tuple[bool, bool]
) -> None:
    p = _profile(profile=name, codepage="cp437")
    assert p.code_modes() == modes
    assert (p.full_cut, p.part_cut) == cuts


@pytest.mark.parametrize(
    ("code", "modes"),
    [
        ("qr", ["qr", "text"]),
        ("barcode", ["barcode", "text"]),
        ("raster-qr", ["raster-qr", "text"]),
        ("text", ["text"]),
    ],
)
def test_a_configured_code_mode_is_tried_first_and_text_after(code: str, modes: list[str]) -> None:
    """What the configuration forces is drawn even where the profile says the printer
    cannot (the retailer knows better), with the text as the way out."""
    assert _profile(profile="TM-U220", codepage="cp437", code=code).code_modes() == modes


def test_the_configurations_overrides_win_over_the_profiles() -> None:
    p = _profile(
        profile="TM-T88V", columns=40, width_px=500, codepage_table=5, qr_module_px=8, cut="full"
    )
    assert (p.columns, p.width_px, p.codepage_table, p.qr_module_px, p.cut) == (
        40,
        500,
        5,
        8,
        "full",
    )
    assert p.dpi == 180
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.columns = 48  # type: ignore[misc]


def test_a_profile_or_code_table_that_does_not_exist_is_a_configuration_error() -> None:
    with pytest.raises(PrinterConfigError, match=r"unknown printer profile 'TM-T99'; known: ") as e:
        _profile(profile="TM-T99")
    known = str(e.value).split("known: ")[1].split(", ")
    assert known == sorted(known, key=str.lower)
    assert {"generic-80mm", "generic-58mm", "TM-T88V", "default"} <= set(known)
    with pytest.raises(
        PrinterConfigError, match="'TM-U220' has no CP866 code table; set codepage_t"
    ):
        _profile(profile="TM-U220")


def test_a_generic_profile_without_the_code_table_is_named_as_configured() -> None:
    """A generic profile's slot is python-escpos's "default" one; the error named that
    profile, which the retailer never configured (review 56)."""
    with pytest.raises(
        PrinterConfigError,
        match=r"^printer profile 'generic-58mm' has no ISO8859-5 code table; set codepage_table",
    ):
        _profile(profile="generic-58mm", codepage="iso8859_5")
    assert (
        _profile(profile="generic-58mm", codepage="iso8859_5", codepage_table=7).codepage_table == 7
    )


def test_the_escpos_profile_carries_the_resolved_media_code_page_columns_and_features() -> None:
    """What python-escpos renders with is this profile, not its base's database entry:
    two profiles on one base (the generic ones on "default") keep their own, and the
    database is left as it was."""
    from tillpoint.printer import _escpos

    wide = _profile(profile="generic-80mm", codepage="cp1251").escpos_profile()
    narrow = _profile(profile="NT-5890K", codepage="cp866", code="qr").escpos_profile()
    generic = _profile(profile="generic-58mm").escpos_profile()
    assert wide.profile_data["media"] == {"dpi": 203, "width": {"mm": "Unknown", "pixels": 576}}
    assert generic.profile_data["media"]["width"]["pixels"] == 384
    assert wide.profile_data["codePages"] == {"46": "CP1251"}
    assert wide.profile_data["fonts"] == {"0": {"name": "Font A", "columns": 48}}
    assert narrow.profile_data["media"] == {"dpi": 203, "width": {"mm": 57.5, "pixels": 384}}
    assert narrow.profile_data["codePages"] == {"17": "CP866"}
    features = narrow.profile_data["features"]
    assert (features["qrCode"], features["barcodeB"], features["bitImageRaster"]) == (
        False,
        False,
        True,
    )
    assert (features["paperFullCut"], features["paperPartCut"]) == (False, False)
    database = _escpos.load().capabilities.CAPABILITIES["profiles"]["default"]
    assert database["media"]["width"] == {"mm": "Unknown", "pixels": "Unknown"}
    assert len(database["codePages"]) > 1


# ---------------------------------------------------------------- printer/_escpos.py

# A process's first `load()`, and what it left: run in a process of its own (the import
# happens once per process). While escpos is imported, the script's own module makes
# temporary directories (as a print worker's thread could at that moment): they must be
# real ones, not the escpos cache.
_LOAD = """
import importlib, json, logging, os, sys, tempfile
from tillpoint.printer import _escpos
mine = [h for h in logging.getLogger().handlers]
made = []
real_import = importlib.import_module
def import_module(name, *a, **k):
    if name == "escpos.printer":
        made.extend([tempfile.mkdtemp(), tempfile.mkdtemp(prefix="x")])
    return real_import(name, *a, **k)
importlib.import_module = import_module
first = _escpos.load()
again = _escpos.load()
after = tempfile.mkdtemp()
print(json.dumps({
    "same": first is again and first is sys.modules["escpos"],
    "profiles": len(first.capabilities.CAPABILITIES["profiles"]),
    "handlers_kept": logging.getLogger().handlers == mine,
    "env": os.environ.get("ESCPOS_CAPABILITIES_PICKLE_DIR"),
    "pickle_dir": first.capabilities.pickle_dir,
    "made": made,
    "after": after,
}))
"""

_A_HANDLER = "import logging; logging.getLogger().addHandler(logging.NullHandler())\n"


def _first_load(
    tmp_path: Path, env: dict[str, str], *, handler: bool = False
) -> tuple[dict[str, Any], str]:
    """Run `_LOAD` with TMPDIR an empty directory of its own; its report and stderr."""
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ESCPOS_", "TILLPOINT_"))}
    base.pop("XDG_CACHE_HOME", None)
    script = (
        "import logging; logging.getLogger().addHandler(logging.NullHandler())\n" if handler else ""
    ) + _LOAD
    run = subprocess.run(
        [sys.executable, "-c", script],
        env={**base, "TMPDIR": str(temp), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout  # nothing but the report: escpos printed nothing
    return json.loads(lines[0]), run.stderr


def _temp_dirs(tmp_path: Path) -> set[str]:
    return {str(p) for p in (tmp_path / "tmp").iterdir()}


def test_the_first_load_pickles_into_the_cache_and_leaves_no_temporary_directory(
    tmp_path: Path,
) -> None:
    """One import: the database pickled into `TILLPOINT_CACHE_DIR/escpos` (its lock file
    the user's alone), no temporary directory made for it (escpos made one per process,
    a CLI call's, for ever), the environment and `tempfile.mkdtemp` as they were, and
    every other caller's temporary directory a real one, made meanwhile or after."""
    cache = tmp_path / "cache"
    report, _ = _first_load(tmp_path, {"TILLPOINT_CACHE_DIR": str(cache)})
    assert (report["same"], report["profiles"] > 30, report["handlers_kept"]) == (True,) * 3
    assert report["pickle_dir"] == str(cache / "escpos") and report["env"] is None
    assert list((cache / "escpos").glob("*.capabilities.pickle"))
    assert (cache / "escpos" / ".lock").stat().st_mode & 0o777 == 0o600
    assert _temp_dirs(tmp_path) == {*report["made"], report["after"]}
    assert len(_temp_dirs(tmp_path)) == 3
    # every later process (each CLI call) reads the same cache, and makes no directory
    again, _ = _first_load(tmp_path, {"TILLPOINT_CACHE_DIR": str(cache)})
    assert again["pickle_dir"] == str(cache / "escpos")
    assert len(_temp_dirs(tmp_path)) == 6


# Two threads' first `load()` at once (the print worker's and a request's): the one that
# waited for the lock returns what the other imported. The waiting thread is seen at the
# lock (its frame on the `with` line) before the holder lets it in: no timing.
_TWO_THREADS = """
import inspect, sys, threading, time, types
from tillpoint.printer import _escpos
source, first = inspect.getsourcelines(_escpos.load)
at_lock = first + next(i for i, line in enumerate(source) if "with _lock:" in line)
imported = types.ModuleType("escpos")
got = []
with _escpos._lock:
    waiter = threading.Thread(target=lambda: got.append(_escpos.load()))
    waiter.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(waiter.ident)
        if frame is not None and frame.f_code.co_name == "load" and frame.f_lineno == at_lock:
            break
        time.sleep(0.01)
    _escpos._loaded = imported
waiter.join(60)
print(got == [imported])
"""


def test_a_load_that_waited_for_another_threads_returns_what_that_one_imported() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _TWO_THREADS], capture_output=True, text=True, timeout=120
    )
    assert (run.returncode, run.stdout) == (0, "True\n"), run.stderr[-2000:]


def test_the_cache_is_under_xdg_cache_home_else_the_homes_cache(tmp_path: Path) -> None:
    xdg, _ = _first_load(tmp_path, {"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert xdg["pickle_dir"] == str(tmp_path / "xdg" / "tillpoint" / "escpos")
    home, _ = _first_load(tmp_path, {"HOME": str(tmp_path / "home")})
    assert home["pickle_dir"] == str(tmp_path / "home" / ".cache" / "tillpoint" / "escpos")


def test_a_cache_that_cannot_be_made_leaves_escpos_one_temporary_directory(
    tmp_path: Path,
) -> None:
    """`TILLPOINT_CACHE_DIR` a file (a read-only home likewise): python-escpos pickles into
    a temporary directory as it would alone; the import still works."""
    (tmp_path / "file").write_text("")
    report, _ = _first_load(tmp_path, {"TILLPOINT_CACHE_DIR": str(tmp_path / "file")})
    assert report["same"] and report["env"] is None
    assert report["pickle_dir"] not in {*report["made"], report["after"]}
    assert _temp_dirs(tmp_path) == {report["pickle_dir"], *report["made"], report["after"]}


def test_a_pickle_directory_the_user_set_is_used_and_kept(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    report, _ = _first_load(
        tmp_path,
        {
            "TILLPOINT_CACHE_DIR": str(tmp_path / "cache"),
            "ESCPOS_CAPABILITIES_PICKLE_DIR": str(own),
        },
    )
    assert report["pickle_dir"] == report["env"] == str(own)
    assert list(own.glob("*.capabilities.pickle"))
    assert _temp_dirs(tmp_path) == {*report["made"], report["after"]}


def test_the_root_logger_keeps_its_handlers_and_gets_none_of_escpos(tmp_path: Path) -> None:
    """escpos calls `logging.basicConfig()`: a handler on the root logger would write every
    library's warnings to stderr in the agent's own format's place."""
    env = {"TILLPOINT_CACHE_DIR": str(tmp_path / "cache")}
    assert _first_load(tmp_path, env)[0]["handlers_kept"]
    assert _first_load(tmp_path, env, handler=True)[0]["handlers_kept"]


def test_what_escpos_prints_on_loading_goes_to_stderr_not_stdout(tmp_path: Path) -> None:
    """A database that does not load: escpos `print()`s its complaint; a `--json` reader
    must not get it on stdout."""
    empty = tmp_path / "capabilities.json"
    empty.write_text("")
    report, err = _first_load(
        tmp_path,
        {"TILLPOINT_CACHE_DIR": str(tmp_path / "cache"), "ESCPOS_CAPABILITIES_FILE": str(empty)},
    )
    assert report["profiles"] == 1 and "could not be loaded" in err
