"""Review 22 (left22): items the previous audits left open. Real hubs over mTLS on
loopback, real `tillpoint` processes, real HTTP; no mocks."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from tillpoint.sync import pki
from tillpoint.sync.authoriser import HubAuthoriser
from tillpoint.sync.client import HubLink
from tillpoint.sync.hub_server import HubConfig, HubDir
from tillpoint.sync.loopback import FAST, LoopbackHub, sample_master_data
from tillpoint.sync.service import SyncService

EXE = Path(sys.executable).parent / "tillpoint"


def enrol_ending(hub: LoopbackHub, device: str, data_dir: Path, days: float) -> pki.Enrollment:
    """Enrol `device` with a certificate that ends `days` from now (issued that much less
    than five years ago), installed from its bundle as `sync install` does."""
    moment = datetime.now(UTC) - timedelta(days=pki.CERT_DAYS) + timedelta(days=days)
    made = pki.issue_device(hub.dir.keys, device, now=moment)
    hub.store.enroll(device, made.fingerprint, datetime.now(UTC))
    bundle = pki.make_bundle(hub.dir.keys, made, hub.address)
    return pki.install_bundle(data_dir, bundle, device)


def said(caplog: pytest.LogCaptureFixture, logger: str, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and words in r.message]


# ---------------------------------------------------------------- 1. certificate reminders


def test_a_running_till_repeats_that_its_certificate_ends_soon(
    hub: LoopbackHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It was said once, at start: a till that runs for months (from one upgrade to the
    next) never said it again, and the certificate ran out unnoticed."""
    from tillpoint.agent.app import till_agent

    data = tmp_path / "till"
    enrollment = enrol_ending(hub, "till-c", data, days=10)
    link = HubLink(hub.address, enrollment)
    authoriser = HubAuthoriser(link, data, "till-c", FAST.redeem_timeout_s)
    agent = till_agent(data, "till-c", hub=authoriser)
    service = SyncService(agent, link, enrollment, replace(FAST, certificate_reminder_s=0.3))
    caplog.set_level(logging.WARNING, logger="tillpoint.sync")
    try:
        service.start()
        assert len(said(caplog, "tillpoint.sync", "certificate expires at")) == 1  # at start
        deadline = time.monotonic() + 10
        while len(said(caplog, "tillpoint.sync", "certificate expires at")) < 3:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    finally:
        service.stop()
        authoriser.close()
        agent.close()
    message = said(caplog, "tillpoint.sync", "certificate expires at")[-1]
    assert message.startswith("this till's certificate expires at ")
    assert "(in 9 days)" in message or "(in 10 days)" in message
    assert "tillpoint hub enroll till-c --renew" in message


def test_a_renewal_installed_without_a_restart_is_not_taken_for_done(
    hub: LoopbackHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The link presents the certificate it read at start: a renewed bundle installed
    beside a running agent (`sync install` says to restart it) does not end the warning."""
    from tillpoint.agent.app import till_agent

    data = tmp_path / "till"
    enrollment = enrol_ending(hub, "till-n", data, days=3)
    link = HubLink(hub.address, enrollment)
    authoriser = HubAuthoriser(link, data, "till-n", FAST.redeem_timeout_s)
    agent = till_agent(data, "till-n", hub=authoriser)
    service = SyncService(agent, link, enrollment, replace(FAST, certificate_reminder_s=0.2))
    caplog.set_level(logging.WARNING, logger="tillpoint.sync")
    try:
        service.start()
        renewed = pki.issue_device(hub.dir.keys, "till-n")
        pki.install_bundle(data, pki.make_bundle(hub.dir.keys, renewed, hub.address), "till-n")
        caplog.clear()
        deadline = time.monotonic() + 10
        while not said(caplog, "tillpoint.sync", "certificate expires at"):
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    finally:
        service.stop()
        authoriser.close()
        agent.close()


def test_a_till_whose_certificate_is_far_from_its_end_says_nothing(
    hub: LoopbackHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tillpoint.sync")
    till = hub.till("till-f", tmp_path / "till", timings=replace(FAST, certificate_reminder_s=0.1))
    try:
        time.sleep(0.5)
    finally:
        till.stop()
    assert said(caplog, "tillpoint.sync", "certificate") == []


def test_the_reminder_looks_once_per_interval_and_says_what_it_finds() -> None:
    looks: list[datetime] = []

    def look(now: datetime) -> tuple[int, str] | None:
        looks.append(now)
        return logging.WARNING, "ends soon"

    reminder = pki.CertificateReminder(look, logging.getLogger("test.reminder"), every_s=3600)
    assert reminder.check() == (logging.WARNING, "ends soon")
    for _ in range(100):  # a loop turning every second asks it: one look a day, not 86,400
        assert reminder.check() is None
    assert len(looks) == 1


def test_expiry_note_words() -> None:
    now = datetime(2026, 12, 3, 5, 0, tzinfo=UTC)
    assert pki.expiry_note(now + timedelta(days=31), now, "x's", "renew") is None
    level, text = pki.expiry_note(now + timedelta(days=1, hours=2), now, "x's", "renew") or (0, "")
    assert level == logging.WARNING and text == (
        "x's certificate expires at 2026-12-04T07:00:00Z (in 1 day): renew"
    )
    level, text = pki.expiry_note(now - timedelta(minutes=1), now, "x's", "renew") or (0, "")
    assert level == logging.ERROR and text.startswith("x's certificate expired at ")


def make_server_certificate_end(keys: pki.HubKeys, days: float) -> None:
    """Replace the hub's server certificate with one from the same CA ending in `days`."""
    moment = datetime.now(UTC) - timedelta(days=pki.CERT_DAYS) + timedelta(days=days)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki._issue(
        pki._load_key(keys.ca_key),
        pki._load_cert(keys.ca_cert),
        key.public_key(),
        pki.HUB_TLS_NAME,
        pki._san([pki.HUB_TLS_NAME, "localhost"]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        moment,
    )
    pki._write_private(keys.server_key, pki._pem_key(key))
    pki._write_public(keys.server_cert, pki._pem_cert(cert))


def test_a_serving_hub_repeats_that_its_server_certificate_ends_soon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "hub"
    HubDir(root).init()
    make_server_certificate_end(HubDir(root).keys, days=5)
    caplog.set_level(logging.WARNING, logger="tillpoint.hub")
    config = HubConfig(watch_interval_s=0.05, publish_every_s=0, certificate_reminder_s=0.3)
    hub = LoopbackHub(root, config)
    try:
        deadline = time.monotonic() + 10
        while len([r for r in caplog.records if "server certificate expires" in r.message]) < 3:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    finally:
        hub.stop()
    message = next(r.message for r in caplog.records if "server certificate expires" in r.message)
    assert "hub init --renew-server" in message and "restart every 'hub serve'" in message


@contextlib.contextmanager
def serving_till(data: Path, device_id: str) -> Iterator[tuple[int, dict[str, Any], list[str]]]:
    """`tillpoint run` of an enrolled till's data directory, once its `/healthz` names a
    cache version: (its HTTP port, that `/healthz` answer, the log lines up to its HTTP
    line). Stopped (SIGTERM) on leaving."""
    import urllib.request

    env = {
        **os.environ,
        "TILLPOINT_DEVICE_ID": device_id,
        "TILLPOINT_DATA_DIR": str(data),
        "TILLPOINT_SERVER__LISTEN": "127.0.0.1:0",
        "TILLPOINT_HTTP__LISTEN": "127.0.0.1:0",
        "TILLPOINT_LOG__FORMAT": "text",
        "TILLPOINT_METRICS__ENABLED": "false",
    }
    proc = subprocess.Popen(
        [EXE, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        port, body, lines = None, {}, []
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while port is None:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            line = proc.stderr.readline()
            lines.append(line)
            if "HTTP interface on" in line:
                port = int(line.rsplit(":", 1)[1])
        while not body.get("cacheVersion"):
            assert time.monotonic() < deadline
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.1)
        yield port, body, lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_healthz_says_when_the_certificate_ends_within_the_warning_window(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """`/healthz` is what a monitoring system reads; Status field 46 says the date always,
    `/healthz` adds it only when it is time to act (and a certificate far from its end
    changes nothing there)."""
    data = tmp_path / "till"
    data.mkdir()
    enrol_ending(hub, "till-h", data, days=7)
    with serving_till(data, "till-h") as (_, body, lines):
        pass
    assert any("this till's certificate expires at" in line for line in lines), lines
    expires = datetime.fromisoformat(body["certificateExpiresAt"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=10)


# ---------------------------------------------------------------- 2. hub status


def hub_process(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`tillpoint hub ARGV` as its own process."""
    env = {**os.environ, "TILLPOINT_HUB_DIR": str(root), "TILLPOINT_LOG__FORMAT": "text"}
    return subprocess.run([EXE, "hub", *argv], env=env, capture_output=True, text=True, timeout=60)


def hub_cli(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`tillpoint hub ARGV` run by main() in this process: its exit code, what it prints
    (~1 s of CI less a command than `hub_process`)."""
    import contextlib
    import io

    from tillpoint.agent.cli import main

    env = {"TILLPOINT_HUB_DIR": str(root), "TILLPOINT_LOG__FORMAT": "text"}
    saved = {name: os.environ.get(name) for name in env}
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["hub", *argv])
            except SystemExit as exc:  # argparse usage errors
                code = int(exc.code or 0)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return subprocess.CompletedProcess(["hub", *argv], code, out.getvalue(), err.getvalue())


def test_hub_status_says_when_each_tills_certificate_ends(tmp_path: Path) -> None:
    """It listed each device's acknowledged seq only: the operator learnt that a till's
    certificate had ended from the till going OFFLINE."""
    root = tmp_path / "hub"
    assert hub_cli(root, "init").returncode == 0
    enrolled = hub_cli(root, "enroll", "till-1", "--address", "127.0.0.1:50070", "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    bundle_ends = datetime.fromisoformat(json.loads(enrolled.stdout)["certificateExpiresAt"])
    # till-2: enrolled (by `hub enroll`, 5 years ago less 10 days) with a certificate ending soon
    keys = HubDir(root).keys
    moment = datetime.now(UTC) - timedelta(days=pki.CERT_DAYS) + timedelta(days=10)
    made = pki.issue_device(keys, "till-2", now=moment)
    store = HubDir(root).open_store()
    try:
        store.enroll("till-2", made.fingerprint, moment)
        old = pki.issue_device(keys, "till-3", now=moment - timedelta(days=20))
        store.enroll("till-3", old.fingerprint, moment - timedelta(days=20))
        store.enroll("till-4", made.fingerprint, datetime.now(UTC))
        store.revoke("till-4", datetime.now(UTC))
    finally:
        store.close()
    doc = hub_cli(root, "status", "--json")
    assert doc.returncode == 0, doc.stderr
    devices = {d["deviceId"]: d for d in json.loads(doc.stdout)["devices"]}
    ends = datetime.fromisoformat(devices["till-1"]["certificateExpiresAt"])
    assert abs(ends - bundle_ends) <= timedelta(seconds=1)
    ends2 = datetime.fromisoformat(devices["till-2"]["certificateExpiresAt"])
    assert abs(ends2 - made.not_after) <= timedelta(seconds=1)
    assert devices["till-4"]["certificateExpiresAt"] is None  # revoked: no certificate works
    server = datetime.fromisoformat(json.loads(doc.stdout)["serverCertificateExpiresAt"])
    assert server > datetime.now(UTC) + timedelta(days=365)
    text = hub_cli(root, "status").stdout
    line1 = next(x for x in text.splitlines() if x.startswith("till-1:"))
    assert "certificate expires 20" in line1 and "renew" not in line1
    line2 = next(x for x in text.splitlines() if x.startswith("till-2:"))
    assert "(in 9 days" in line2 or "(in 10 days" in line2, line2
    assert "tillpoint hub enroll till-2 --renew" in line2
    line3 = next(x for x in text.splitlines() if x.startswith("till-3:"))
    assert "certificate EXPIRED at" in line3 and "tillpoint hub enroll till-3 --renew" in line3
    assert "server certificate expires" in text


# ---------------------------------------------------------------- 3. a new snapshot key


def replace_snapshot_key(keys: pki.HubKeys) -> None:
    """What docs/PROTOCOL.md §1 says to do when the key is compromised: a new pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    pki._write_private(keys.snapshot_key, pki._pem_key(key))
    keys.snapshot_pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def test_files_signed_with_a_replaced_snapshot_key_are_built_again(tmp_path: Path) -> None:
    """The hub served (and `hub export` wrote) the snapshot files it had built with the
    old key until someone deleted them: every till re-enrolled with the new key refused
    them ("wrongly signed") and sold on its old snapshot."""
    root = tmp_path / "hub"
    first = LoopbackHub(root, data=sample_master_data())
    try:
        first.server.builder.wait_full(1, timeout=30)  # v1's full file, old key
    finally:
        first.stop()
    assert (root / "snapshots" / "v0000000001-full.snap").exists()
    replace_snapshot_key(HubDir(root).keys)
    hub = LoopbackHub(root)  # restarted with the new key
    till = hub.till("till-k", tmp_path / "till")  # enrolled anew: trusts the new key only
    try:
        deadline = time.monotonic() + 20
        while till.agent.status().to_json()["cacheVersion"] != 1:
            doc = till.agent.status().to_json()
            assert time.monotonic() < deadline, doc["lastError"]
            time.sleep(0.05)
        assert till.agent.status().to_json()["lastError"] == ""
    finally:
        till.stop()
        hub.stop()
    # and `hub export` (another process, the same directory) writes a file the till takes
    out = tmp_path / "export.json"
    done = hub_process(root, "export", "till-k", "--out", str(out))
    assert done.returncode == 0, done.stderr
    env = {
        **os.environ,
        "TILLPOINT_DEVICE_ID": "till-k",
        "TILLPOINT_DATA_DIR": str(tmp_path / "till"),
        "TILLPOINT_LOG__FORMAT": "text",
    }
    loaded = subprocess.run(
        [EXE, "snapshot", "load", str(out)], env=env, capture_output=True, text=True, timeout=60
    )
    assert loaded.returncode == 0, loaded.stderr


# ---------------------------------------------------------------- 4. log masking


def test_a_snapshot_files_name_in_a_real_log_is_not_masked(tmp_path: Path) -> None:
    """`v0000000001-full.json` was logged as `v******0001-full.json` (ten digits: "a
    phone"), and support could not tell which file was meant."""
    root = tmp_path / "hub"
    assert (
        hub_cli(
            root,
            "import",
            str(Path(__file__).parents[1] / "examples" / "catalogue.json"),
            "--publish",
        ).returncode
        == 0
    )
    enrolled = hub_cli(root, "enroll", "till-x", "--address", "127.0.0.1:1")
    assert enrolled.returncode == 0, enrolled.stderr
    assert hub_cli(root, "export", "till-x", "--out", str(tmp_path / "x.json")).returncode == 0
    assert (root / "snapshots" / "v0000000001-full.json").exists()
    replace_snapshot_key(HubDir(root).keys)
    env = {**os.environ, "TILLPOINT_HUB_DIR": str(root), "TILLPOINT_LOG__FORMAT": "text"}
    proc = subprocess.Popen(
        [EXE, "hub", "serve", "--listen", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while not any("hub serving on port" in x for x in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stderr.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    said = [x for x in lines if "signed with another key" in x]
    assert said and "v0000000001-full.json" in said[0], lines


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("snapshot v0000000001-full.snap built", "snapshot v0000000001-full.snap built"),
        ("device till-1 seq 12345678 set aside", "device till-1 seq 12345678 set aside"),
        (
            "snapshot 3 applied (full, 123456789 bytes)",
            "snapshot 3 applied (full, 123456789 bytes)",
        ),
        ("resuming snapshot 4 at byte 2770000000", "resuming snapshot 4 at byte 2770000000"),
        ("sha256 3fa912345678901bc", "sha256 3fa912345678901bc"),
        ("x = 1.23456789012", "x = 1.23456789012"),
        (
            "balancePoints 9223372036854775808 is too big",
            "balancePoints 9223372036854775808 is too big",
        ),
        # cards and phones, as tokens of their own, still masked
        ("card 2770000000017.", "card *********0017."),
        ('{"card": "2770000000017"}', '{"card": "*********0017"}'),
        ("receipt r-2770000000017 refused", "receipt r-*********0017 refused"),
        ("карта 2770000000017", "карта *********0017"),
        ("phone +79161234567, or 8 916 123-45-67", "phone +7*******4567, or 8*******4567"),
        ("and 9161234567", "and ******4567"),
    ],
)
def test_masking_reads_the_context(text: str, expected: str) -> None:
    from tillpoint.agent.logs import mask

    assert mask(text) == expected


# ---------------------------------------------------------------- 5. HTTP: encodings, versions


def test_a_compressed_body_is_415_and_the_connection_goes_on(server: Any) -> None:
    """A gzip body was read as JSON (400 "not valid JSON"), and plain JSON labelled gzip
    was taken as if the label were not there."""
    import gzip

    from .conftest import receipt
    from .test_http_api import Client

    client = Client(server.port)
    try:
        plain = json.dumps(receipt()).encode()
        for raw in (gzip.compress(plain), plain):
            got = client.post("/v1/quote", raw=raw, headers={"Content-Encoding": "gzip"})
            assert got.status == 415, got.body
            doc = json.loads(got.body)
            assert doc["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
            assert "Content-Encoding gzip" in doc["error"]["message"]
        got = client.post("/v1/quote", raw=plain, headers={"Content-Encoding": "BR, gzip"})
        assert got.status == 415
        # the same keep-alive connection answers the next request; identity is no encoding
        got = client.post("/v1/quote", raw=plain, headers={"Content-Encoding": "identity"})
        assert got.status == 200, got.body
        assert client.post("/v1/quote", raw=plain).status == 200
    finally:
        client.close()


def _raw_request(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("version", ["9.9", "2.0", "0.9", "3.1"])
def test_another_http_major_version_is_505(server: Any, version: str) -> None:
    """h11 takes any `HTTP/D.D`: uvicorn answered `HTTP/9.9` as if it were 1.1."""
    data = _raw_request(server.port, f"GET /healthz HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 505 "), data
    doc = json.loads(body)
    assert doc["error"]["code"] == "HTTP_VERSION_NOT_SUPPORTED"
    assert f"HTTP/{version}" in doc["error"]["message"]


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.9"])
def test_http_1_of_any_minor_version_is_served(server: Any, version: str) -> None:
    data = _raw_request(server.port, f"GET /healthz HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 200 "), data


# ---------------------------------------------------------------- 6. --version


def test_version_names_the_contract_docs_contract_md_implements() -> None:
    """It said "SPEC 2026-11": the commissioners' document, not the contract version the
    repository states (docs/CONTRACT.md's head) and implements."""
    import re

    head = (Path(__file__).parents[1] / "docs" / "CONTRACT.md").read_text(encoding="utf-8")
    found = re.search(
        r"\*\*Contract version: `([\w.]+)`, (\d{4}-\d{2})\*\* \(sections §1–§(\d+)\)", head
    )
    assert found, "docs/CONTRACT.md lost its 'Contract version' line"
    package, edition, last = found.groups()
    run = subprocess.run([EXE, "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.endswith(f"(contract {package}, {edition}, sections 1-{last})\n")
    assert "SPEC" not in run.stdout
    doc = json.loads(
        subprocess.run(
            [EXE, "--version", "--json"], capture_output=True, text=True, timeout=60
        ).stdout
    )
    assert doc["contract"] == f"{package}, {edition}, sections 1-{last}"
    sections = re.findall(r"^## (\d+)\. ", head, re.M)
    assert sections[-1] == last  # the head's count is the file's


# ---------------------------------------------------------------- 7. the configuration's types


def config_check(tmp_path: Path, toml: str, **env: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "c.toml"
    conf.write_text(toml, encoding="utf-8")
    full = {
        **os.environ,
        "TILLPOINT_DEVICE_ID": "till-t",
        "TILLPOINT_DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    return subprocess.run(
        [EXE, "--config", str(conf), "config", "check", "--json"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        ('[http]\nenabled = "yes"\n', '[http] enabled = "yes": true or false is expected'),
        ('[http]\nenabled = "false"\n', '[http] enabled = "false": true or false is expected'),
        ("[metrics]\nenabled = 0\n", "[metrics] enabled = 0: true or false is expected"),
        ('[server]\nmax_workers = "10"\n', '[server] max_workers = "10": an integer is expected'),
        ("[server]\nmax_workers = 8.0\n", "[server] max_workers = 8.0: an integer is expected"),
        ("build_workers = true\n", "build_workers = true: an integer is expected"),
        ('[hub]\npoll_interval_s = "60"\n', '[hub] poll_interval_s = "60": a number is expected'),
        ("device_id = 5\n", "device_id = 5: a string is expected"),
        ('[http]\nallowed_origins = "http://x"\n', "allowed_origins"),
        (
            '[printer]\nkind = "file"\ndevice = "/dev/null"\ncolumns = "48"\n',
            '[printer] columns = "48": an integer is expected',
        ),
        (
            '[display]\nkind = "serial"\ndevice = "loop://"\nbaudrate = 9600.5\n',
            "[display] baudrate = 9600.5: an integer is expected",
        ),
    ],
)
def test_a_toml_value_of_another_type_than_its_setting_is_refused(
    tmp_path: Path, toml: str, said: str
) -> None:
    """Pydantic's lax reading took `enabled = "yes"` (or 0, or "false"), `max_workers =
    "10"` and `8.0` as 10 and 8, `build_workers = true` as 1: a file that said something
    else than it meant was "valid". (A string for a number, or a number for a string,
    pydantic refused already; kept here as the rule's edges.)"""
    run = config_check(tmp_path, toml)
    assert run.returncode == 2, run.stdout
    assert said in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_what_toml_and_the_environment_write_naturally_is_taken(tmp_path: Path) -> None:
    toml = (
        "[hub]\npoll_interval_s = 60\n"  # an integer for a number of seconds
        '[printer]\nkind = "usb"\nusb_vendor_id = "0x04b8"\nusb_product_id = 514\n'
        "stopbits = 2\nconnect_timeout_s = 2.5\n"
    )
    run = config_check(
        tmp_path,
        toml,
        TILLPOINT_SERVER__MAX_WORKERS="10",  # the environment is text
        TILLPOINT_HTTP__ENABLED="false",
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["server"]["maxWorkers"] == 10 and doc["http"]["enabled"] is False
    assert doc["printer"]["usbVendorId"] == 0x04B8 and doc["hub"]["pollIntervalS"] == 60


def test_config_check_names_every_device_table_with_a_problem(tmp_path: Path) -> None:
    """It said the first one only: a wrong [scanner] showed up after the [display] was
    mended, one `config check` (and one till restart) later."""
    run = config_check(tmp_path, '[display]\nkind = "vfd"\n[scanner]\nkind = "hid"\n')
    assert run.returncode == 2
    assert "[display.kind]" in run.stderr and "[scanner.kind]" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_the_environment_sets_a_serial_devices_stop_bits(tmp_path: Path) -> None:
    """`TILLPOINT_PRINTER__STOPBITS=2` was refused ("Input should be 1 or 2"): a Literal
    takes no text, and the environment is text."""
    run = config_check(
        tmp_path,
        "",
        TILLPOINT_PRINTER__KIND="serial",
        TILLPOINT_PRINTER__DEVICE="loop://",
        TILLPOINT_PRINTER__STOPBITS="2",
        TILLPOINT_DISPLAY__KIND="serial",
        TILLPOINT_DISPLAY__DEVICE="loop://",
        TILLPOINT_DISPLAY__STOPBITS="2",
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["printer"]["stopbits"] == 2 and doc["display"]["stopbits"] == 2
    run = config_check(tmp_path, "", TILLPOINT_PRINTER__STOPBITS="3")
    assert run.returncode == 2 and "[printer.stopbits]" in run.stderr


def test_run_takes_a_loose_value_with_a_warning(tmp_path: Path) -> None:
    """A file an earlier release took (`enabled = "yes"`) must not stop a till after an
    upgrade: `run` starts, as pydantic reads it, and its log names the value to mend."""
    conf = tmp_path / "c.toml"
    conf.write_text('[metrics]\nenabled = "no"\n[server]\nmax_workers = "4"\n', encoding="utf-8")
    env = {
        **os.environ,
        "TILLPOINT_DEVICE_ID": "till-w",
        "TILLPOINT_DATA_DIR": str(tmp_path / "data"),
        "TILLPOINT_SERVER__LISTEN": "127.0.0.1:0",
        "TILLPOINT_HTTP__LISTEN": "127.0.0.1:0",
        "TILLPOINT_LOG__FORMAT": "text",
    }
    proc = subprocess.Popen(
        [EXE, "--config", str(conf), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while not any("PosAgent serving" in x for x in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stderr.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    warned = [x for x in lines if "WARNING" in x and "config check" in x]
    assert any('[metrics] enabled = "no": true or false is expected' in x for x in warned)
    assert any('[server] max_workers = "4": an integer is expected' in x for x in warned)
