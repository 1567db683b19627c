"""The trust chain between tills and the hub (review 21, sec21): certificates that expire,
renewal, bundles, key files, what status says. Real gRPC over loopback with mTLS."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from tillpoint.sync import pki
from tillpoint.sync.client import HubLink
from tillpoint.sync.hub_server import HubDir
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import CLI

TIMEOUT = 5.0
EXE = Path(sys.executable).parent / "tillpoint"


def enrol_expired(hub: LoopbackHub, device: str, data_dir: Path) -> pki.Enrollment:
    """Enrol `device` with a certificate that expired a minute ago (issued five years and a
    minute before now), installed as a bundle was before it expired."""
    moment = datetime.now(UTC) - timedelta(days=pki.CERT_DAYS, minutes=1)
    made = pki.issue_device(hub.dir.keys, device, now=moment)
    hub.store.enroll(device, made.fingerprint, datetime.now(UTC))
    good = pki.issue_device(hub.dir.keys, device)  # only to install the files
    enrollment = pki.install_bundle(
        data_dir, pki.make_bundle(hub.dir.keys, good, hub.address), device
    )
    (enrollment.cert).write_bytes(made.cert_pem)
    enrollment.key.write_bytes(made.key_pem)
    return enrollment


def pull_error(link: HubLink, device: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        list(link.stub.PullSnapshot(pb.PullSnapshotRequest(device_id=device), timeout=TIMEOUT))
    return link.failed(err.value)


# ---------------------------------------------------------------- a till's certificate


def test_a_till_with_an_expired_certificate_says_so_and_how_to_renew(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """The hub drops the till in the handshake; the till used to say only "the hub is
    unreachable (... Socket closed)", and the operator looked for a network fault."""
    enrollment = enrol_expired(hub, "till-x", tmp_path / "till")
    link = HubLink(hub.address, enrollment)
    try:
        message = pull_error(link, "till-x")
    finally:
        link.close()
    assert message.startswith("this till's certificate expired at "), message
    assert "tillpoint hub enroll till-x --renew" in message
    assert "tillpoint sync install" in message
    assert "\n" not in message


def test_a_valid_certificate_refused_is_still_the_hubs_words(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    enrollment = hub.enroll("till-r", tmp_path / "till")
    hub.store.revoke("till-r", datetime.now(UTC))
    link = HubLink(hub.address, enrollment)
    try:
        message = pull_error(link, "till-r")
    finally:
        link.close()
    assert message.startswith("the hub refused this till: device till-r is revoked"), message
    # and the way back, as for an expired certificate
    assert "tillpoint hub enroll till-r --renew" in message and "sync install" in message


def test_status_shows_when_the_certificate_and_the_snapshot_expire(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    till = hub.till("till-s", tmp_path / "till")
    try:
        deadline = time.monotonic() + 10
        while till.agent.status().to_json()["cacheVersion"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        doc = till.agent.status().to_json()
        from tillpoint.agent.wire import status_message

        message = status_message(till.agent.status())  # the gRPC Status has both fields
    finally:
        till.stop()
    cert = datetime.fromisoformat(doc["certificateExpiresAt"])
    assert abs(cert - (datetime.now(UTC) + timedelta(days=pki.CERT_DAYS))) < timedelta(hours=2)
    snapshot = datetime.fromisoformat(doc["cacheExpiresAt"])
    assert snapshot > datetime.now(UTC) + timedelta(days=6)
    assert message.certificate_expires_at == doc["certificateExpiresAt"]
    assert message.cache_expires_at == doc["cacheExpiresAt"]


def test_status_of_a_till_enrolled_by_an_older_release_reads_the_certificate(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """A marker without `certificateExpiresAt` (written before it was recorded)."""
    from tillpoint.agent.ledger import open_ledger
    from tillpoint.sync.state import sync_status

    data = tmp_path / "till"
    enrollment = hub.enroll("till-o", data)
    marker = enrollment.root / "enrollment.json"
    meta = json.loads(marker.read_text())
    del meta["certificateExpiresAt"]
    marker.write_text(json.dumps(meta))
    conn = open_ledger(data)
    try:
        got = sync_status(conn)["certificateExpiresAt"]
    finally:
        conn.close()
    expires = enrollment.certificate_expires_at()
    assert expires is not None and datetime.fromisoformat(got) == expires


# ---------------------------------------------------------------- the bundle


def test_install_refuses_an_expired_bundle(hub: LoopbackHub, tmp_path: Path) -> None:
    moment = datetime.now(UTC) - timedelta(days=pki.CERT_DAYS, minutes=1)
    made = pki.issue_device(hub.dir.keys, "till-e", now=moment)
    bundle = pki.make_bundle(hub.dir.keys, made, hub.address)
    with pytest.raises(pki.InputError) as err:
        pki.install_bundle(tmp_path / "till", bundle, "till-e")
    assert "the bundle's certificate expired at" in err.value.message
    assert "--renew" in err.value.message
    assert not pki.is_enrolled(tmp_path / "till")


def test_install_checks_the_certificates_signature_not_only_the_ca_name(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """Every hub's CA is named "tillpoint hub CA": a certificate of another hub beside
    this hub's CA matched by name and was installed (the till then failed every call)."""
    other = HubDir(tmp_path / "other")
    other.init()
    theirs = pki.issue_device(other.keys, "till-f")
    bundle = pki.make_bundle(hub.dir.keys, theirs, hub.address)  # our CA, their certificate
    with pytest.raises(pki.InputError) as err:
        pki.install_bundle(tmp_path / "till", bundle, "till-f")
    assert "not signed by the bundle's CA" in err.value.message


def test_sync_install_under_a_running_agent_says_to_restart_it(
    hub: LoopbackHub, tmp_path: Path, cli: CLI
) -> None:
    from tillpoint.agent.lock import DataDirLock

    made = pki.issue_device(hub.dir.keys, "till-1")
    bundle = pki.make_bundle(hub.dir.keys, made, hub.address)
    lock = DataDirLock(tmp_path / "data").acquire()  # what `tillpoint run` holds
    try:
        run = cli("sync", "install", bundle)
    finally:
        lock.release()
    assert run.code == 0, run.err
    assert "restart it" in run.out and f"pid {os.getpid()}" in run.out
    again = cli("sync", "install", bundle, "--json")
    assert again.code == 0 and again.json()["restartNeeded"] is False


# ---------------------------------------------------------------- the hub's certificate


def expire_server_certificate(keys: pki.HubKeys) -> None:
    moment = datetime.now(UTC) - timedelta(days=pki.CERT_DAYS, minutes=1)
    ca_key = pki._load_key(keys.ca_key)
    ca = pki._load_cert(keys.ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki._issue(
        ca_key,
        ca,
        key.public_key(),
        pki.HUB_TLS_NAME,
        pki._san([pki.HUB_TLS_NAME, "localhost", "hub.example"]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        moment,
    )
    pki._write_private(keys.server_key, pki._pem_key(key))
    pki._write_public(keys.server_cert, pki._pem_cert(cert))


def test_hub_serve_refuses_an_expired_server_certificate_and_renewal_mends_it(
    tmp_path: Path,
) -> None:
    """The hub served with it: every till failed the handshake and sold OFFLINE "the hub
    is unreachable", and no command could issue a new one (`hub init` never replaces keys)."""
    root = tmp_path / "hub"
    env = {**os.environ, "TILLPOINT_HUB_DIR": str(root), "TILLPOINT_LOG__FORMAT": "text"}
    subprocess.run([EXE, "hub", "init"], env=env, check=True, capture_output=True)
    keys = HubDir(root).keys
    expire_server_certificate(keys)
    ca_before = keys.ca_cert.read_bytes()
    served = subprocess.run(
        [EXE, "hub", "serve", "--listen", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 2  # the packaged unit does not restart it in a loop
    assert "certificate expired at" in served.stderr
    assert "hub init --renew-server" in served.stderr
    assert len(served.stderr.strip().splitlines()) == 1, served.stderr
    renewed = subprocess.run(
        [EXE, "hub", "init", "--renew-server", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert renewed.returncode == 0, renewed.stderr
    assert keys.ca_cert.read_bytes() == ca_before  # the tills' trust is unchanged
    assert stat.S_IMODE(keys.server_key.stat().st_mode) == 0o600
    expires = datetime.fromisoformat(json.loads(renewed.stdout)["serverCertificateExpiresAt"])
    assert expires > datetime.now(UTC) + timedelta(days=365)
    pem = keys.server_cert.read_bytes()
    assert pki.certificate_problem(pem, "x", "y") is None
    from cryptography import x509

    names = (
        x509.load_pem_x509_certificate(pem)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.DNSName)
    )
    assert {"tillpoint-hub", "hub.example"} <= set(names)  # the old names kept
    # and a till of that hub connects to the renewed server
    hub = LoopbackHub(root, data=sample_master_data())
    try:
        enrollment = hub.enroll("till-1", tmp_path / "till")
        link = HubLink(hub.address, enrollment)
        try:
            chunks = list(
                link.stub.PullSnapshot(pb.PullSnapshotRequest(device_id="till-1"), timeout=TIMEOUT)
            )
        finally:
            link.close()
        assert chunks[0].version >= 1
    finally:
        hub.stop()


def test_a_till_facing_an_expired_hub_certificate_says_it_is_the_handshake(
    tmp_path: Path,
) -> None:
    root = tmp_path / "hub"
    hub = LoopbackHub(root, data=sample_master_data(), start=False)
    enrollment = hub.enroll("till-1", tmp_path / "till")
    expire_server_certificate(hub.dir.keys)
    # a server started before its certificate expired keeps serving with it
    key, cert = hub.dir.keys.server_key.read_bytes(), hub.dir.keys.server_cert.read_bytes()
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=hub.dir.keys.ca_cert.read_bytes(), require_client_auth=True
    )
    from concurrent import futures

    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_HubServicer_to_server(hub.server.servicer, grpc_server)
    port = grpc_server.add_secure_port("127.0.0.1:0", creds)
    grpc_server.start()
    try:
        link = HubLink(f"127.0.0.1:{port}", enrollment)
        try:
            message = pull_error(link, "till-1")
        finally:
            link.close()
    finally:
        grpc_server.stop(0)
    assert message.startswith("the TLS handshake with the hub failed"), message


# ---------------------------------------------------------------- key files


def test_hub_refuses_a_private_key_other_users_can_read(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub enroll` in this process (main()), `hub serve` as the process a unit starts."""
    root = tmp_path / "hub"
    env = {**os.environ, "TILLPOINT_HUB_DIR": str(root)}
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(root))
    assert cli("hub", "init").code == 0
    keys = HubDir(root).keys
    keys.ca_key.chmod(0o644)  # copied to another server without keeping its mode
    enrolled = cli("hub", "enroll", "till-1", "--address", "127.0.0.1:1")
    assert enrolled.code == 2
    assert f"chmod 600 {keys.ca_key}" in enrolled.err
    assert len(enrolled.err.strip().splitlines()) == 1
    keys.ca_key.chmod(0o600)
    keys.server_key.chmod(0o640)
    served = subprocess.run(
        [EXE, "hub", "serve", "--listen", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 2 and f"chmod 600 {keys.server_key}" in served.stderr


def test_a_till_refuses_a_device_key_other_users_can_read(hub: LoopbackHub, tmp_path: Path) -> None:
    enrollment = hub.enroll("till-k", tmp_path / "till")
    enrollment.key.chmod(0o644)
    with pytest.raises(pki.EnrollmentError) as err:
        HubLink(hub.address, enrollment)
    assert f"chmod 600 {enrollment.key}" in err.value.message


def test_a_secret_written_over_a_stale_temporary_file_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    stale = tmp_path / "device.key.tmp"
    stale.write_bytes(b"left by a crash")
    stale.chmod(0o644)
    pki._write_private(path, b"secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- what logs say


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_logged_trace_masks_cards_and_phones_in_both_formats(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`[log] format = "text"` (and "auto" on a terminal) printed a trace as Python wrote
    it: an exception's words with a card number or a phone in full."""
    import logging

    from tillpoint.agent import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("INFO", fmt)
        try:
            raise ValueError("card 2770000000017 of +79161234567")
        except ValueError:
            logging.getLogger("tillpoint.test").exception("refused %s", "2770000000017")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "ValueError" in err
    assert "2770000000017" not in err and "79161234567" not in err, err
    assert "*********0017" in err


# ---------------------------------------------------------------- the snapshot key


def test_after_the_signing_key_is_replaced_a_renewed_bundle_takes_the_refused_snapshot(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """docs/PROTOCOL.md §1: a replaced snapshot key means a renewed bundle for every till.
    The till remembered the refused bundle (version and SHA-256) and never checked it
    again, with the new key either: it stayed on its old snapshot until the hub happened
    to publish another version."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from tillpoint.sync.pull import Puller

    data = tmp_path / "till"
    till = hub.till("till-1", data, start=False)
    try:
        assert Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull().version
        new = ed25519.Ed25519PrivateKey.generate()
        keys = hub.dir.keys
        pki._write_private(keys.snapshot_key, pki._pem_key(new))
        pki._write_public(
            keys.snapshot_pub,
            new.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        hub.restart()  # the hub signs with the new key from now on
        version = hub.publish()
        refused = Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        assert refused.status == "REFUSED" and "signature" in refused.message
    finally:
        till.stop()
    # the documented way out: a renewed bundle (it carries the new public key), a restart
    enrollment = hub.enroll("till-1", data)
    link = HubLink(hub.address, enrollment)
    from tillpoint.agent.app import till_agent

    agent = till_agent(data, "till-1")
    try:
        result = Puller(agent, link, enrollment, call_timeout_s=2).pull()
    finally:
        agent.close()
        link.close()
    assert (result.status, result.version) == ("APPLIED", version), result


def test_a_bundle_of_another_device_names_this_tills_own_way_out_first(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """The hint was only to change the till's device_id to the bundle's: on a till that has
    sold (its ledger is one device's) that is refused, and on an enrolled one it takes
    another till's identity."""
    made = pki.issue_device(hub.dir.keys, "till-3")
    bundle = pki.make_bundle(hub.dir.keys, made, hub.address)
    with pytest.raises(pki.InputError) as err:
        pki.install_bundle(tmp_path / "till", bundle, "till-1")
    message = err.value.message
    assert "install 'till-1''s own bundle" in message
    assert "tillpoint hub enroll till-1 --renew" in message
    assert message.index("--renew") < message.index('set device_id = "till-3"')


def test_a_clock_a_few_minutes_off_leaves_a_new_certificate_valid(hub: LoopbackHub) -> None:
    """Certificates are valid from an hour before they are made: a till or hub whose clock
    is a few minutes behind the other's does not see a fresh certificate as not valid yet."""
    made = pki.issue_device(hub.dir.keys, "till-c")
    now = datetime.now(UTC)
    for skew in (-10, -3, 3, 10):
        assert (
            pki.certificate_problem(made.cert_pem, "x", "y", now=now + timedelta(minutes=skew))
            is None
        )
    late = pki.certificate_problem(made.cert_pem, "this till's", "y", now=now - timedelta(hours=2))
    assert late is not None and "set the clock right" in late


def test_a_snapshot_key_pair_that_does_not_match_is_refused(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`snapshot.pub` restored from another backup than `snapshot.key`: the hub served and
    enrolled with them, and every till enrolled since refused every snapshot. (`hub serve`
    as a process; init, enroll and status in this process.)"""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    root = tmp_path / "hub"
    env = {**os.environ, "TILLPOINT_HUB_DIR": str(root)}
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(root))
    assert cli("hub", "init").code == 0
    keys = HubDir(root).keys
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    keys.snapshot_pub.write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    serve = ["hub", "serve", "--listen", "127.0.0.1:0"]
    done = subprocess.run([EXE, *serve], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "is not the public half of" in done.stderr
    enrolled = cli("hub", "enroll", "till-1", "--address", "127.0.0.1:1")
    assert enrolled.code == 2, enrolled.err
    assert "is not the public half of" in enrolled.err
    status = cli("hub", "status")
    assert status.code == 0 and "till-1" not in status.out  # refused before it was enrolled


def test_a_certificate_that_expires_on_an_open_connection_is_refused_at_the_next_call(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """TLS checks the dates at the handshake only; a till's connection (its Subscribe
    stream keeps it open for days) went on working past the certificate's end, and the
    till learnt of it only at some later reconnect, as "the hub is unreachable"."""
    moment = datetime.now(UTC) - timedelta(days=pki.CERT_DAYS) + timedelta(seconds=3)
    made = pki.issue_device(hub.dir.keys, "till-t", now=moment)
    hub.store.enroll("till-t", made.fingerprint, datetime.now(UTC))
    bundle = pki.make_bundle(hub.dir.keys, made, hub.address)
    enrollment = pki.install_bundle(tmp_path / "till", bundle, "till-t")
    link = HubLink(hub.address, enrollment)
    request = pb.PullSnapshotRequest(device_id="till-t")
    try:
        chunks = list(link.stub.PullSnapshot(request, timeout=TIMEOUT))
        assert chunks[0].version >= 1
        time.sleep(max(0.0, (made.not_after - datetime.now(UTC)).total_seconds()) + 0.5)
        with pytest.raises(grpc.RpcError) as err:
            list(link.stub.PullSnapshot(request, timeout=TIMEOUT))  # the same connection
        assert isinstance(err.value, grpc.Call)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
        assert "expired" in (err.value.details() or "")
        assert link.failed(err.value).startswith("this till's certificate expired at")
    finally:
        link.close()


def test_enroll_refuses_an_address_without_a_port(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    done = cli("hub", "enroll", "till-1", "--address", "hub.example")
    assert done.code == 2 and "hub.example:50070" in done.err, done.err
    status = cli("hub", "status")
    assert status.code == 0 and "till-1" not in status.out  # nothing enrolled: no --renew
