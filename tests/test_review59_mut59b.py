"""Review 59 (mut59b): mutation testing of `sync/cli.py`, the command line of the reference
hub (`tillpoint hub ...`) and of the till's sync side (`tillpoint sync ...`).

The rules the tool's surviving mutants showed untested, pinned on real parts: real hub
directories made by `hub init`/`hub import` (SQLite, and one on a throwaway PostgreSQL),
the hub served in this process on a random 127.0.0.1 port (`LoopbackHub`, the server
`hub serve` runs) or as a real `tillpoint hub serve` process, real SQLite ledgers, and
`tillpoint.agent.cli.main` as the CLI runs it (`tests.test_sync_cli.run`). And the four
product faults found, each test failing before its fix: `hub receipts`/`sync receipts`
told a `--since` or `--limit` past the protocol's int64 as "internal error" (exit 1);
`--out` and `--port-file` names the file system refuses likewise; `sync now --wait -30`
taken silently; a range's end said as 2.14748e+09.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data

from tests.test_sync_cli import run

INT64_MAX = 2**63 - 1


def _hub_with_a_till(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LoopbackHub, Path]:
    """A served hub with the sample data and till-1 enrolled with it by `hub enroll` and
    `sync install` (its address in the bundle)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    till = tmp_path / "till"
    hub.enroll("till-1", till)
    return hub, till


def _sell_offline(till: Path, receipt_id: str = "r1") -> None:
    """A sale journalled in the ledger (its outbox) of a till that has its snapshot."""
    from tillpoint.agent.service import Agent

    agent = Agent(till, "till-1")
    try:
        agent.checkout(receipt_from_json(receipt(receipt_id, "2770000000017")))
    finally:
        agent.close()


# ---------------------------------------------------------------- the fault: receipts' flags


@pytest.mark.parametrize("flag", ["--since", "--limit"])
def test_hub_receipts_refuses_a_since_or_limit_past_int64_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """It was "internal error: OverflowError: Python int too large to convert to SQLite
    INTEGER", exit 1 (a script retries on 1)."""
    hub_dir = str(tmp_path / "hub")
    assert run(capsys, "hub", "init", "--hub-dir", hub_dir)[0] == 0
    assert run(capsys, "hub", "enroll", "till-1", "--hub-dir", hub_dir)[0] == 0
    argv = ["hub", "receipts", "--device", "till-1", "--hub-dir", hub_dir]
    for bad in (INT64_MAX + 1, 10**20, -1):
        code, out, err = run(capsys, *argv, flag, str(bad))
        assert (code, out) == (2, ""), err
        assert err == (f"tillpoint: {flag} must be 0 or more and at most {INT64_MAX} (got {bad})\n")
    code, out, err = run(capsys, *argv, flag, str(INT64_MAX))
    assert code == 0, err
    assert "0 transaction(s) of till-1 stored" in out


@pytest.mark.parametrize("flag", ["--since", "--limit"])
def test_sync_receipts_refuses_a_since_or_limit_past_int64_before_asking_the_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    """It was "internal error: ValueError: Value out of range: …", exit 1."""
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        argv = ["sync", "receipts", "--data-dir", str(till)]
        for bad in (INT64_MAX + 1, -1):
            code, out, err = run(capsys, *argv, flag, str(bad))
            assert (code, out) == (2, ""), err
            assert err == (
                f"tillpoint: {flag} must be 0 or more and at most {INT64_MAX} (got {bad})\n"
            )
        code, out, err = run(capsys, *argv, flag, str(INT64_MAX))
        assert code == 0, err
        assert "of till-1 stored" in out
    finally:
        hub.stop()


# ---------------------------------------------------------------- the flags' ranges


def _serve_and_stop(tmp_path: Path, hub_dir: Path, *flags: str, port_file: bool = True) -> None:
    """`tillpoint hub serve FLAGS` as a real process on 127.0.0.1: it binds (its port file
    written, or without one its port answering), then a SIGTERM ends it with exit 0 and
    its port file gone."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from tillpoint.sync.loopback import wait_for

    from tests.conftest import free_port

    def answers(port: int) -> bool:
        with socket.socket() as probe:
            probe.settimeout(5)
            return probe.connect_ex(("127.0.0.1", port)) == 0

    written = tmp_path / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    port = 0 if port_file else free_port()
    argv = ["hub", "serve", "--hub-dir", str(hub_dir), "--listen", f"127.0.0.1:{port}"]
    argv += ["--port-file", str(written)] if port_file else []
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("tillpoint")), *argv, *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        up = (lambda: written.exists()) if port_file else (lambda: answers(port))
        wait_for(lambda: up() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not written.exists()  # no port once stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


# (flag, a value refused, the range said)
SERVE_REFUSED = [
    ("--ttl-hours", "0", "above 0 and at most 87660"),
    ("--ttl-hours", "87660.5", "above 0 and at most 87660"),
    ("--hold-ttl", "0", "above 0 and at most 86400"),
    ("--hold-ttl", "86400.5", "above 0 and at most 86400"),
    ("--heartbeat", "0", "above 0 and at most 3600"),
    ("--heartbeat", "3600.5", "above 0 and at most 3600"),
    ("--publish-every", "-0.5", "at least 0 and at most 604800"),
    ("--publish-every", "604800.5", "at least 0 and at most 604800"),
    ("--keep-deltas-days", "-0.5", "at least 0 and at most 36600"),
    ("--keep-deltas-days", "nan", "at least 0 and at most 36600"),
    ("--workers", "0", "at least 1 and at most 10000"),
    ("--workers", "10001", "at least 1 and at most 10000"),
    ("--rate-kib", "-0.5", "at least 0 and at most 1099511627776"),
    ("--rate-kib", "inf", "at least 0 and at most 1099511627776"),
]


def test_hub_serve_refuses_each_flag_out_of_its_range_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each of `hub serve`'s numbers refused (exit 2, its range said, nothing served) one
    step past either end; --rate-kib's end in full, not %g's 1.09951e+12."""
    hub_dir = str(tmp_path / "hub")
    assert run(capsys, "hub", "init", "--hub-dir", hub_dir)[0] == 0
    for flag, bad, rule in SERVE_REFUSED:
        argv = ["hub", "serve", "--hub-dir", hub_dir, "--listen", "127.0.0.1:0", flag, bad]
        code, out, err = run(capsys, *argv)
        got = float(bad) if flag != "--workers" else int(bad)
        assert (code, out, err) == (
            2,
            "",
            f"tillpoint: {flag} must be a number {rule} (got {got})\n",
        ), (flag, bad)


def test_hub_serve_takes_each_flag_at_the_ends_of_its_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side of the ranges: 0 is "never" for --publish-every, "keep every
    version" for --keep-deltas-days, "no limit" for --rate-kib; one worker serves; the
    upper ends are taken as given."""
    hub_dir = tmp_path / "hub"
    assert run(capsys, "hub", "init", "--hub-dir", str(hub_dir))[0] == 0
    _serve_and_stop(
        tmp_path,
        hub_dir,
        *("--publish-every", "0", "--keep-deltas-days", "0", "--rate-kib", "0"),
        *("--workers", "1", "--heartbeat", "3600", "--hold-ttl", "86400"),
        *("--ttl-hours", "87660"),
    )
    _serve_and_stop(
        tmp_path,
        hub_dir,
        *("--publish-every", "604800", "--keep-deltas-days", "36600"),
        *("--workers", "10000", "--rate-kib", str(2**40)),
        port_file=False,
    )


def test_hub_publish_ranges_ttl_above_0_and_min_version_within_the_stores_integer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TTL of 0 hours (a snapshot expired as published) is refused and nothing is
    published; the smallest and the largest TTL and --min-version 2^31 - 1 are taken, the
    version's end said in full (it was "at most 2.14748e+09")."""
    hub_dir = str(tmp_path / "hub")
    assert run(capsys, "hub", "init", "--hub-dir", hub_dir)[0] == 0
    publish = ["hub", "publish", "--hub-dir", hub_dir, "--json"]
    for bad in ("0", "-1", "nan", "inf", "87660.01"):
        code, out, err = run(capsys, *publish, "--ttl-hours", bad)
        assert (code, out) == (2, "")
        assert err == (
            "tillpoint: --ttl-hours must be a number above 0 and at most 87660"
            f" (got {float(bad)})\n"
        )
    for bad in ("-1", str(2**31)):
        code, out, err = run(capsys, *publish, "--min-version", bad)
        assert (code, out) == (2, "")
        assert err == (
            "tillpoint: --min-version must be a number at least 0 and at most 2147483647"
            f" (got {bad})\n"
        )
    code, doc, err = run(capsys, "hub", "status", "--hub-dir", hub_dir, "--json")
    assert (code, doc["version"]) == (0, 0), err  # nothing published by a refusal
    code, doc, err = run(capsys, *publish, "--ttl-hours", "87660")
    assert code == 0, err
    issued, expires = (datetime.fromisoformat(doc[k]) for k in ("issuedAt", "expiresAt"))
    assert expires - issued == timedelta(hours=87660)
    code, doc, err = run(capsys, *publish, "--ttl-hours", "1")
    assert code == 0, err
    issued, expires = (datetime.fromisoformat(doc[k]) for k in ("issuedAt", "expiresAt"))
    assert (doc["version"], expires - issued) == (2, timedelta(hours=1))
    code, doc, err = run(capsys, *publish, "--min-version", str(2**31 - 1))
    assert (code, doc["version"]) == (0, 2**31 - 1), err
    code, doc, err = run(capsys, *publish, "--min-version", "0")
    assert (code, doc["version"]) == (0, 2**31), err  # the next version, not below


def test_sync_now_timeout_above_0_and_wait_at_least_0_and_at_most_a_day(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sync now --timeout 0` (or NaN, or more than a day) and `--wait -1` (or NaN) are
    refused before the hub is asked: exit 2, one line; a day's timeout, no wait, taken."""
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        now = ["sync", "now", "--data-dir", str(till), "--json"]
        for bad in ("0", "-1", "nan", "86400.5"):
            code, out, err = run(capsys, *now, "--timeout", bad)
            assert (code, out) == (2, "")
            assert err == (
                "tillpoint: --timeout must be a number above 0 and at most 86400"
                f" (got {float(bad)})\n"
            )
        for bad in ("-1", "nan", "86400.5"):  # --wait's: -1 was taken as 0, silently
            code, out, err = run(capsys, *now, "--wait", bad)
            assert (code, out) == (2, "")
            assert err == (
                "tillpoint: --wait must be a number at least 0 and at most 86400"
                f" (got {float(bad)})\n"
            )
        code, doc, err = run(capsys, *now, "--timeout", "86400", "--wait", "0")
        assert code == 0, err
        assert doc["pull"]["status"] == "APPLIED"
    finally:
        hub.stop()


# ---------------------------------------------------------------- where the hub is, what is written


def test_the_hub_is_hub_dir_else_tillpoint_hub_dir_else_the_data_dirs_hub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub init` without --hub-dir makes the hub in $TILLPOINT_HUB_DIR, else in <data
    dir>/hub (the help's default); --hub-dir wins over the variable."""
    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    monkeypatch.delenv("TILLPOINT_HUB_DIR", raising=False)
    data = tmp_path / "data"
    code, doc, err = run(capsys, "--data-dir", str(data), "hub", "init", "--json")
    assert (code, doc["hubDir"]) == (0, str(data / "hub")), err
    assert (data / "hub" / "hub.db").is_file()
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "env-hub"))
    code, doc, err = run(capsys, "--data-dir", str(data), "hub", "init", "--json")
    assert (code, doc["hubDir"], doc["created"]) == (0, str(tmp_path / "env-hub"), True), err
    flag = tmp_path / "flag-hub"
    code, doc, err = run(
        capsys, "--data-dir", str(data), "hub", "init", "--hub-dir", str(flag), "--json"
    )
    assert (code, doc["hubDir"]) == (0, str(flag)), err


def test_an_out_or_port_file_the_system_cannot_look_at_is_one_line_exit_2_and_nothing_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name longer than the file system takes (ENAMETOOLONG): `hub enroll --out`,
    `hub export --out` and `hub serve --port-file` were "internal error: OSError: [Errno
    36] File name too long", exit 1 (a script retries on 1), from `Path.exists()` and the
    stale port file's unlink; now exit 2 in one line, nobody enrolled, nothing served."""
    hub_dir = str(tmp_path / "hub")
    assert (
        run(capsys, "hub", "import", str(_catalogue(tmp_path)), "--publish", "--hub-dir", hub_dir)[
            0
        ]
        == 0
    )
    assert run(capsys, "hub", "enroll", "till-0", "--hub-dir", hub_dir)[0] == 0
    too_long = tmp_path / ("b" * 300 + ".json")
    for argv in (
        ["hub", "enroll", "till-1", "--out", str(too_long)],
        ["hub", "export", "till-0", "--out", str(too_long)],
        ["hub", "serve", "--listen", "127.0.0.1:0", "--port-file", str(too_long)],
    ):
        code, out, err = run(capsys, *argv, "--hub-dir", hub_dir)
        flag = argv[-2]
        assert (code, out, err) == (2, "", f"tillpoint: {flag} {too_long}: File name too long\n")
    code, doc, _ = run(capsys, "hub", "status", "--hub-dir", hub_dir, "--json")
    assert [d["deviceId"] for d in doc["devices"]] == ["till-0"]  # till-1 not enrolled


def _catalogue(tmp_path: Path) -> Path:
    """The sample master data as an import file."""
    catalogue = tmp_path / "c.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    return catalogue


def test_a_bundle_or_export_the_machine_will_not_write_is_one_line_and_says_the_way_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An `--out` in a folder nothing can be made in (/proc: as a full disk or a folder
    made read-only meanwhile, which root would write anyway): `hub enroll` says the device
    is enrolled and how to issue its bundle again, `hub export` that it cannot write; one
    line each, no traceback."""
    hub_dir = str(tmp_path / "hub")
    assert (
        run(capsys, "hub", "import", str(_catalogue(tmp_path)), "--publish", "--hub-dir", hub_dir)[
            0
        ]
        == 0
    )
    nowhere = Path("/proc/tillpoint-review59-bundle.json")
    code, out, err = run(
        capsys, "hub", "enroll", "till-1", "--hub-dir", hub_dir, "--out", str(nowhere)
    )
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith(
        f"tillpoint: device till-1 is enrolled, but its bundle could not be written to {nowhere}"
    ), err
    assert err.endswith("; issue it again with 'tillpoint hub enroll till-1 --renew --out FILE'\n")
    code, doc, _ = run(capsys, "hub", "status", "--hub-dir", hub_dir, "--json")
    assert [d["deviceId"] for d in doc["devices"]] == ["till-1"]
    code, out, err = run(
        capsys, "hub", "export", "till-1", "--hub-dir", hub_dir, "--out", str(nowhere)
    )
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith(f"tillpoint: cannot write {nowhere}"), err


def test_hub_migrate_on_a_sqlite_hub_says_it_migrates_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub migrate` of a SQLite hub opens it (which migrates it) and says so; it is no
    PostgreSQL URL to migrate."""
    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub_dir = str(tmp_path / "hub")
    assert run(capsys, "hub", "init", "--hub-dir", hub_dir)[0] == 0
    code, doc, err = run(capsys, "hub", "migrate", "--hub-dir", hub_dir, "--json")
    assert (code, doc) == (0, {"store": "sqlite", "applied": [], "schemaVersion": None}), err
    code, out, err = run(capsys, "hub", "migrate", "--hub-dir", hub_dir)
    assert (code, out) == (0, "the SQLite store is up to date (it migrates itself when opened)\n")


# ---------------------------------------------------------------- sync install


def _sent_and_acked(till: Path) -> tuple[int, str | None]:
    """The ledger's kept acknowledgements: sync_sent's rows and the hub's mark."""
    import sqlite3

    conn = sqlite3.connect(till / "ledger.db")
    try:
        (sent,) = conn.execute("SELECT count(*) FROM sync_sent").fetchone()
        row = conn.execute("SELECT value FROM sync_state WHERE key = 'acked_through'").fetchone()
    finally:
        conn.close()
    return sent, row[0] if row else None


def test_another_hubs_bundle_forgets_the_old_hubs_acknowledgements_the_same_hubs_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A till whose sales hub A took: its renewed bundle from A keeps A's acknowledgements
    (kept to resend were A restored from a backup); B's bundle forgets them, and the first
    `sync now` to B sends nothing again (each sale of the last 35 days would be counted at
    B a second time)."""
    hub_a, till = _hub_with_a_till(tmp_path, monkeypatch)
    hub_b = LoopbackHub(tmp_path / "hub-b", data=sample_master_data())
    try:
        assert run(capsys, "sync", "now", "--data-dir", str(till))[0] == 0  # its snapshot
        _sell_offline(till)
        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
        assert (code, doc["pushed"], doc["outboxDepth"]) == (0, 1, 0), err
        assert _sent_and_acked(till) == (1, "1")
        for hub, name in ((hub_a, "hub"), (hub_b, "hub-b")):
            bundle = tmp_path / f"{name}.json"
            enroll = ["hub", "enroll", "till-1", "--hub-dir", str(tmp_path / name)]
            enroll += ["--address", hub.address, "--out", str(bundle)]
            code, _, err = run(capsys, *enroll, *(["--renew"] if hub is hub_a else []))
            assert code == 0, err
            code, _, err = run(capsys, "sync", "install", str(bundle), "--data-dir", str(till))
            assert code == 0, err
            if hub is hub_a:
                assert _sent_and_acked(till) == (1, "1")  # the same hub: kept
        assert _sent_and_acked(till) == (0, None)
        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
        assert (code, doc["pushed"], doc["outboxDepth"]) == (0, 0, 0), err
        code, out, err = run(
            capsys, "hub", "receipts", "--device", "till-1", "--hub-dir", str(tmp_path / "hub-b")
        )
        assert out.startswith("0 transaction(s) of till-1 stored"), out + err
    finally:
        hub_b.stop()
        hub_a.stop()


# ---------------------------------------------------------------- hub status


def _enrolled_at(hub_dir: Path, device: str, when: datetime | str) -> None:
    """Move a device's enrolment (and so its certificate's end) back in the hub's store
    (a text: written as it is)."""
    import sqlite3

    conn = sqlite3.connect(hub_dir / "hub.db")
    try:
        with conn:
            conn.execute(
                "UPDATE devices SET enrolled_at = ? WHERE device_id = ?",
                (when if isinstance(when, str) else when.isoformat(), device),
            )
    finally:
        conn.close()


def _uploaded_at(hub_dir: Path, device: str, text: str) -> None:
    """Write a device's transactions' arrival time in the hub's store as `text`."""
    import sqlite3

    conn = sqlite3.connect(hub_dir / "hub.db")
    try:
        with conn:
            conn.execute(
                "UPDATE transactions SET ingested_at = ? WHERE device_id = ?", (text, device)
            )
    finally:
        conn.close()


def test_hub_status_says_each_tills_last_upload_certificate_end_and_revocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the central team reads first: a till that never uploaded says so, one that did
    says when (RFC 3339, "Z") and through which seq; a certificate's end is the enrolment
    plus CERT_DAYS, to the second, with the renewal named from 30 days before and EXPIRED
    after; a revoked till says when and no certificate end."""
    import time
    from datetime import UTC

    from tillpoint.sync.pki import CERT_DAYS

    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    hub_dir = tmp_path / "hub"
    try:
        status = ["hub", "status", "--hub-dir", str(hub_dir)]

        def status_json() -> tuple[int, Any, str]:
            """`hub status --json` on a machine whose zone is JST-9: the store's times
            are UTC, not the machine's."""
            monkeypatch.setenv("TZ", "JST-9")
            time.tzset()
            try:
                return run(capsys, *status, "--json")
            finally:
                monkeypatch.delenv("TZ")
                time.tzset()

        for device in ("till-2", "till-3", "till-4", "till-5", "till-6"):
            assert run(capsys, "hub", "enroll", device, "--hub-dir", str(hub_dir))[0] == 0
        assert run(capsys, "hub", "revoke", "till-4", "--hub-dir", str(hub_dir))[0] == 0
        now = datetime.now(UTC).replace(microsecond=0)
        _enrolled_at(hub_dir, "till-2", now - timedelta(days=CERT_DAYS - 10, seconds=-5))
        _enrolled_at(hub_dir, "till-3", now - timedelta(days=CERT_DAYS + 1))
        # a time without an offset (an older store's) is UTC, not the machine's zone
        _enrolled_at(hub_dir, "till-5", datetime(2026, 1, 2, 3, 4, 5))
        _enrolled_at(hub_dir, "till-6", "not a time")  # no end known: none said
        code, doc, err = status_json()
        assert code == 0, err
        devices = {d["deviceId"]: d for d in doc["devices"]}
        five = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(days=CERT_DAYS)
        assert devices["till-5"]["certificateExpiresAt"] == five.isoformat().replace("+00:00", "Z")
        assert devices["till-1"]["lastUploadAt"] is None
        assert devices["till-1"]["ackedThroughSeq"] == 0
        ends = now + timedelta(days=10, seconds=5)
        assert devices["till-2"]["certificateExpiresAt"] == ends.isoformat().replace("+00:00", "Z")
        assert devices["till-4"]["certificateExpiresAt"] is None
        assert devices["till-4"]["revokedAt"]
        code, out, err = run(capsys, *status)
        lines = {line.split(":", 1)[0]: line for line in out.splitlines()}
        assert lines["till-1"].startswith("till-1: transactions through seq 0, no upload yet,")
        assert lines["till-1"].endswith(
            f", certificate expires {devices['till-1']['certificateExpiresAt']}"
        )
        renew = "renew: 'tillpoint hub enroll {} --renew --address HOST:PORT'"
        assert lines["till-2"].endswith(
            f", certificate expires at {devices['till-2']['certificateExpiresAt']} (in 10 days):"
            f" {renew.format('till-2')}"
        ), lines["till-2"]
        assert ", certificate EXPIRED at " in lines["till-3"]
        assert lines["till-3"].endswith(renew.format("till-3"))
        assert lines["till-4"].endswith(f", revoked {devices['till-4']['revokedAt']}")
        assert devices["till-6"]["certificateExpiresAt"] is None
        assert lines["till-6"] == "till-6: transactions through seq 0, no upload yet"
        assert out.splitlines()[-1] == (
            f"the hub's server certificate expires {doc['serverCertificateExpiresAt']}"
        )
        assert doc["serverCertificateExpiresAt"].endswith("Z")

        assert run(capsys, "sync", "now", "--data-dir", str(till))[0] == 0
        _sell_offline(till)
        before = datetime.now(UTC).replace(microsecond=0)
        assert run(capsys, "sync", "now", "--data-dir", str(till))[0] == 0
        after = datetime.now(UTC)
        code, doc, err = status_json()
        assert (code, doc["version"]) == (0, 1), err
        (mine,) = (d for d in doc["devices"] if d["deviceId"] == "till-1")
        assert mine["ackedThroughSeq"] == 1
        assert mine["lastUploadAt"].endswith("Z")
        assert before <= datetime.fromisoformat(mine["lastUploadAt"]) <= after
        code, out, err = run(capsys, *status)
        assert out.startswith(f"snapshot version 1 issued {doc['issuedAt']}, 0 row(s) waiting")
        assert f"till-1: transactions through seq 1, last upload {mine['lastUploadAt']}," in out
        _uploaded_at(hub_dir, "till-1", "a damaged time")  # said as the store has it
        code, out, err = run(capsys, *status)
        assert "till-1: transactions through seq 1, last upload a damaged time," in out
    finally:
        hub.stop()


# ---------------------------------------------------------------- sync now's answers


def test_sync_now_says_what_it_pushed_and_pulled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sync now`'s line: how many transactions were pushed, how many wait, and the
    snapshot applied (its size) or already the newest; exit 0, nothing on stderr."""
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        now = ["sync", "now", "--data-dir", str(till)]
        code, out, err = run(capsys, *now)
        assert (code, err) == (0, "")
        assert out.startswith("pushed 0 transaction(s), 0 waiting; snapshot 1 applied (")
        assert out.endswith(" bytes)\n")
        _sell_offline(till, "r-1")
        _sell_offline(till, "r-2")
        code, out, err = run(capsys, *now)
        assert (code, out, err) == (
            0,
            "pushed 2 transaction(s), 0 waiting; snapshot 1 is the newest\n",
            "",
        )
        code, doc, err = run(capsys, *now, "--json")
        assert code == 0, err
        assert (doc["pushed"], doc["setAside"], doc["outboxDepth"]) == (0, 0, 0)
        assert doc["pull"]["status"] == "UP_TO_DATE" and doc["hubCallsOwed"] == {
            call: 0 for call in doc["hubCallsOwed"]
        }
    finally:
        hub.stop()


def test_owed_text_names_three_receipts_of_each_call_and_counts_the_rest() -> None:
    """`sync now`'s words for the releases and shrinks the hub has still to take."""
    from tillpoint.sync.cli import _owed_text

    assert _owed_text({}) == ""
    assert _owed_text({"release": [], "shrink": []}) == ""
    tail = " still owed to the hub, sent by `tillpoint run` or the next `sync now`"
    assert _owed_text({"release": ["r1"], "shrink": []}) == f"; 1 release(s) (r1){tail}"
    four = ["r1", "r2", "r3", "r4"]
    assert _owed_text({"release": four[:3], "shrink": four}) == (
        f"; 3 release(s) (r1, r2, r3) and 4 shrink(s) (r1, r2, r3 and 1 more){tail}"
    )


# ---------------------------------------------------------------- enrolment


def test_hub_enroll_checks_the_address_and_the_out_before_enrolling_and_renews_only_the_known(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --address or --out is refused before the device is enrolled (a retry would
    need --renew); an enrolled id without --renew, and --renew of an id never enrolled, are
    refused and change nothing; `hub revoke` of an unknown id is exit 2."""
    hub_dir = str(tmp_path / "hub")
    assert run(capsys, "hub", "init", "--hub-dir", hub_dir)[0] == 0
    enroll = ["hub", "enroll", "till-1", "--hub-dir", hub_dir]
    code, out, err = run(capsys, *enroll, "--address", "hub.local:99999")
    assert (code, out) == (2, "") and err.startswith("tillpoint: --address "), err
    code, out, err = run(capsys, *enroll, "--out", str(tmp_path))
    assert (code, out) == (2, "") and "not a regular file" in err, err
    code, out, err = run(capsys, *enroll, "--out", str(tmp_path / "no-folder" / "b.json"))
    assert code == 0, err  # a missing folder is made (`write_bundle`)
    code, out, err = run(capsys, *enroll, "--renew", "--out", str(tmp_path / "b1.json"))
    assert code == 0, err
    code, out, err = run(capsys, *enroll, "--out", str(tmp_path / "b2.json"))
    assert code == 2 and "device till-1 is already enrolled (since " in err, err
    assert not (tmp_path / "b2.json").exists()
    code, out, err = run(capsys, "hub", "enroll", "till-9", "--hub-dir", hub_dir, "--renew")
    assert code == 2 and "device till-9 is not enrolled, so there is nothing to renew" in err
    code, out, err = run(capsys, "hub", "revoke", "till-9", "--hub-dir", hub_dir)
    assert (code, out, err) == (2, "", "tillpoint: device till-9 is not enrolled\n")
    code, doc, err = run(capsys, "hub", "status", "--hub-dir", hub_dir, "--json")
    assert [d["deviceId"] for d in doc["devices"]] == ["till-1"]
    code, doc, err = run(capsys, "hub", "revoke", "till-1", "--hub-dir", hub_dir, "--json")
    assert (code, doc) == (0, {"deviceId": "till-1", "revoked": True, "changed": True}), err
    code, doc, err = run(capsys, "hub", "revoke", "till-1", "--hub-dir", hub_dir, "--json")
    assert (code, doc["changed"]) == (0, False), err
    code, out, err = run(capsys, *enroll, "--out", str(tmp_path / "b3.json"))
    assert code == 2 and "device till-1 is already revoked (since " in err, err


def test_sync_install_takes_its_hubs_bundle_again_with_crlf_line_endings_over_waiting_sales(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewed bundle of the same hub whose PEM came through a Windows copy (CRLF) is the
    same CA: taken over a non-empty outbox, which then drains to that hub."""
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        assert run(capsys, "sync", "now", "--data-dir", str(till))[0] == 0
        _sell_offline(till)
        bundle = tmp_path / "renewed.json"
        enroll = ["hub", "enroll", "till-1", "--hub-dir", str(tmp_path / "hub"), "--renew"]
        assert run(capsys, *enroll, "--address", hub.address, "--out", str(bundle))[0] == 0
        doc = json.loads(bundle.read_text(encoding="utf-8"))
        doc["caCertificate"] = doc["caCertificate"].replace("\n", "\r\n")
        bundle.write_text(json.dumps(doc), encoding="utf-8")
        code, _, err = run(capsys, "sync", "install", str(bundle), "--data-dir", str(till))
        assert code == 0, err
        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
        assert (code, doc["pushed"], doc["outboxDepth"]) == (0, 1, 0), err
    finally:
        hub.stop()


def test_sync_install_refuses_another_hubs_bundle_while_sales_wait_and_a_ledger_of_another_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another hub's bundle for this device is refused while a sale waits (exit 2 with the
    count; the enrolment and the sale unchanged); a bundle installed under another device
    id on this ledger is refused before anything is written, naming both ids."""
    from tillpoint.sync.pki import load_enrollment

    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        assert run(capsys, "sync", "now", "--data-dir", str(till))[0] == 0
        _sell_offline(till)
        other = tmp_path / "other-hub"
        assert run(capsys, "hub", "init", "--hub-dir", str(other))[0] == 0
        bundle = tmp_path / "other.json"
        argv = ["hub", "enroll", "till-1", "--hub-dir", str(other), "--out", str(bundle)]
        assert run(capsys, *argv)[0] == 0
        code, out, err = run(capsys, "sync", "install", str(bundle), "--data-dir", str(till))
        assert (code, out) == (2, "")
        assert err.startswith("tillpoint: 1 transaction(s) have not reached the current hub")
        assert load_enrollment(till).hub_address == hub.address
        argv = ["hub", "enroll", "till-2", "--hub-dir", str(other), "--out", str(bundle)]
        assert run(capsys, *argv)[0] == 0
        monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-2")
        code, out, err = run(capsys, "sync", "install", str(bundle), "--data-dir", str(till))
        assert (code, out) == (2, "")
        assert err.startswith(f"tillpoint: the ledger of {till} holds the sales of device 'till-1'")
        monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
        assert load_enrollment(till).device_id == "till-1"
        code, doc, err = run(capsys, "sync", "now", "--data-dir", str(till), "--json")
        assert (code, doc["pushed"]) == (0, 1), err
    finally:
        hub.stop()


# ---------------------------------------------------------------- receipts at the hub


def test_hub_and_sync_receipts_list_pages_of_the_tills_sales_with_more_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three sales stored: `--limit 2` lists seq 1 and 2 and says there is more, `--since
    2` lists seq 3, the JSON is ListTransactionsReply's; `sync receipts` (asked over mTLS)
    says what `hub receipts` says; an id the hub never enrolled is exit 2."""
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        assert run(capsys, "sync", "now", "--data-dir", str(till))[0] == 0
        for n in (1, 2, 3):
            _sell_offline(till, f"r-{n}")
        assert run(capsys, "sync", "now", "--data-dir", str(till))[0] == 0
        at_hub = ["hub", "receipts", "--device", "till-1", "--hub-dir", str(tmp_path / "hub")]
        at_till = ["sync", "receipts", "--data-dir", str(till)]
        for argv in (at_hub, at_till):
            code, out, err = run(capsys, *argv, "--limit", "2")
            assert code == 0, err
            lines = out.splitlines()
            assert [line.split(" at ")[0] for line in lines[:2]] == [
                "seq 1: CHECKOUT r-1",
                "seq 2: CHECKOUT r-2",
            ]
            assert lines[2] == (
                "2 transaction(s) of till-1 stored (more: --since the last seq);"
                " all stored through seq 3"
            )
            code, doc, err = run(capsys, *argv, "--since", "2", "--json")
            assert code == 0, err
            assert [t["seq"] for t in doc["transactions"]] == [3]
            assert (doc["ackedThroughSeq"], doc["more"]) == (3, False)
            code, doc, err = run(capsys, *argv, "--json")
            assert [t["receiptId"] for t in doc["transactions"]] == ["r-1", "r-2", "r-3"]
        code, out, err = run(capsys, *at_hub[:3], "till-9", *at_hub[4:])
        assert (code, out, err) == (2, "", "tillpoint: device till-9 is not enrolled at this hub\n")
    finally:
        hub.stop()


def test_hub_import_into_a_new_sqlite_hub_makes_its_store_not_its_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the hub.db an import makes is the hub; its keys are `hub init`'s (or the
    first enrolment's), made then (on PostgreSQL, a shared database, the import makes
    them)."""
    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub_dir = tmp_path / "hub"
    assert (
        run(capsys, "hub", "import", str(_catalogue(tmp_path)), "--hub-dir", str(hub_dir))[0] == 0
    )
    assert (hub_dir / "hub.db").is_file()
    code, doc, err = run(capsys, "hub", "init", "--hub-dir", str(hub_dir), "--json")
    assert (code, doc["created"]) == (0, True), err


def test_sync_install_beside_a_running_till_says_to_restart_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While `tillpoint run` holds the data directory (its lock taken here, as run takes
    it) the install is done and says the running till keeps its old enrolment until
    restarted: `restartNeeded` true, its pid named."""
    import os

    from tillpoint.agent.lock import DataDirLock

    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    hub_dir, bundle, till = str(tmp_path / "hub"), tmp_path / "b.json", tmp_path / "till"
    assert run(capsys, "hub", "init", "--hub-dir", hub_dir)[0] == 0
    argv = ["hub", "enroll", "till-1", "--hub-dir", hub_dir, "--address", "hub.local:50070"]
    assert run(capsys, *argv, "--out", str(bundle))[0] == 0
    till.mkdir()
    lock = DataDirLock(till).acquire()
    try:
        code, out, err = run(capsys, "sync", "install", str(bundle), "--data-dir", str(till))
        assert code == 0, err
        assert out == (
            "enrolled as till-1 with hub hub.local:50070; this till now accepts only snapshots"
            f" signed by its hub; another tillpoint (pid {os.getpid()}) is running on {till}:"
            " restart it (systemctl restart tillpoint), it keeps the enrolment it started"
            " with until then\n"
        )
        code, doc, err = run(
            capsys, "sync", "install", str(bundle), "--data-dir", str(till), "--json"
        )
        assert (code, doc["restartNeeded"]) == (0, True), err
    finally:
        lock.release()


def test_hub_coupon_conflicts_and_set_aside_on_a_hub_with_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The review lists of a hub with nothing to review: a line saying so, exit 0, and
    with --json the list's key holding an empty list; its status says version 0, nothing
    published yet, no conflict and nothing set aside."""
    hub_dir = str(tmp_path / "hub")
    assert run(capsys, "hub", "init", "--hub-dir", hub_dir)[0] == 0
    for argv, key, none in (
        (["coupon-conflicts"], "conflicts", "no coupon code was used twice"),
        (["set-aside"], "setAside", "nothing was set aside"),
        (["set-aside", "--device", "till-1"], "setAside", "nothing was set aside"),
    ):
        assert run(capsys, "hub", *argv, "--hub-dir", hub_dir) == (0, f"{none}\n", "")
        assert run(capsys, "hub", *argv, "--hub-dir", hub_dir, "--json") == (0, {key: []}, "")
    code, out, err = run(capsys, "hub", "status", "--hub-dir", hub_dir)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == (
        "snapshot version 0 (nothing published yet), 0 row(s) waiting to be published"
    )
    assert out.splitlines()[-2] == (
        "0 coupon conflict(s) (hub coupon-conflicts), 0 set-aside transaction(s) (hub set-aside)"
    )
    code, doc, err = run(capsys, "hub", "status", "--hub-dir", hub_dir, "--json")
    assert (doc["version"], doc["issuedAt"], doc["devices"]) == (0, "", [])
    assert (doc["setAside"], doc["setAsideResolved"], doc["couponConflicts"]) == (0, 0, 0)


def test_sync_install_of_a_file_that_is_no_bundle_on_an_enrolled_till_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON list given as the bundle of an enrolled till: refused in one line, exit 2,
    the enrolment as it was (not asked for its CA as if it were a bundle)."""
    from tillpoint.sync.pki import load_enrollment

    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        for bad in ("[]", '"a bundle"'):
            wrong = tmp_path / "wrong.json"
            wrong.write_text(bad, encoding="utf-8")
            code, out, err = run(capsys, "sync", "install", str(wrong), "--data-dir", str(till))
            assert (code, out, err.count("\n")) == (2, "", 1), err
            assert "internal error" not in err
        assert load_enrollment(till).hub_address == hub.address
    finally:
        hub.stop()


def test_hub_migrate_and_import_on_postgresql_say_the_steps_and_make_the_keys(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub migrate` of a new PostgreSQL store names the steps it applied and the schema
    version, then that it is up to date; `hub import` there makes the hub's keys (the
    database is shared: no hub.db makes the hub)."""
    from tillpoint.sync.hub_postgres import MIGRATIONS, SCHEMA_VERSION

    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub = ["--store", pg_url, "--hub-dir", str(tmp_path / "hub")]
    code, out, err = run(capsys, "hub", "migrate", *hub)
    steps = ", ".join(str(n) for n, _, _ in MIGRATIONS)
    assert (code, out) == (0, f"applied migration(s) {steps}; schema version {SCHEMA_VERSION}\n")
    code, out, err = run(capsys, "hub", "migrate", *hub)
    assert (code, out) == (0, f"the schema is up to date (version {SCHEMA_VERSION})\n"), err
    assert run(capsys, "hub", "import", str(_catalogue(tmp_path)), *hub)[0] == 0
    assert (tmp_path / "hub" / "keys").is_dir()
    assert not (tmp_path / "hub" / "hub.db").exists()


def test_hub_import_publish_gives_the_version_its_ttl_and_refuses_a_ttl_of_0_before_importing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub import --publish` publishes a version valid the TTL (a week by default), not
    one expired as published; a TTL of 0 is refused before anything is imported."""
    monkeypatch.delenv("TILLPOINT_HUB_STORE", raising=False)
    hub_dir = tmp_path / "hub"
    imp = ["hub", "import", str(_catalogue(tmp_path)), "--hub-dir", str(hub_dir), "--publish"]
    code, out, err = run(capsys, *imp, "--ttl-hours", "0")
    assert (code, out) == (2, "") and "--ttl-hours must be a number above 0" in err
    assert not (hub_dir / "hub.db").exists()  # refused before the hub was made
    assert run(capsys, *imp)[0] == 0
    assert run(capsys, *imp, "--ttl-hours", "2")[0] == 0
    lasted = [valid for _, valid in publications(hub_dir)]
    assert lasted == [timedelta(hours=168), timedelta(hours=2)]


def publications(hub_dir: Path) -> list[tuple[int, timedelta]]:
    """Each version of a SQLite hub and how long it is valid (expiresAt − issuedAt)."""
    import sqlite3

    conn = sqlite3.connect(hub_dir / "hub.db")
    try:
        rows = conn.execute(
            "SELECT version, issued_at, expires_at FROM publications ORDER BY version"
        ).fetchall()
    finally:
        conn.close()
    return [
        (version, datetime.fromisoformat(ends) - datetime.fromisoformat(issued))
        for version, issued, ends in rows
    ]
