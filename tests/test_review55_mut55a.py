"""Review 55 (mut55a): the till's trust in its hub (the contract §9; docs/PROTOCOL.md §1).

Mutation testing of `sync/pki.py` and `sync/client.py` left these rules held by no test:
the name the till checks whatever address it dials, the certificates' dates and their
edges, the CA's path length, the bundle's shape, and the online state of the link. Real
parts: the hub's keys made by `hub init`, bundles by `hub enroll`, installed by `sync
install` (in-process CLI), the reference hub over mTLS on loopback, forged certificates
made with the `cryptography` package."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from tillpoint.sync import pki
from tillpoint.sync.client import HubLink
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import CLI

TIMEOUT = 5.0
CONNECT_S = 10.0  # a loaded machine's handshake
EXE = Path(sys.executable).parent / "tillpoint"


def serve_with_certificate(hub: LoopbackHub, common_name: str, names: list[str]) -> None:
    """Replace the hub's server certificate by one of its own CA for `names` (`_san` adds
    127.0.0.1), then start it."""
    keys = hub.dir.keys
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki._issue(
        pki._load_key(keys.ca_key),
        pki._load_cert(keys.ca_cert),
        key.public_key(),
        common_name,
        pki._san(names),
        ExtendedKeyUsageOID.SERVER_AUTH,
        datetime.now(UTC),
    )
    pki._write_private(keys.server_key, pki._pem_key(key))
    pki._write_public(keys.server_cert, pki._pem_cert(cert))
    hub.start()


# ---------------------------------------------------------------- the name `tillpoint-hub`


def test_a_hub_dialled_at_an_address_its_certificate_does_not_name_is_trusted(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """The till checks the name `tillpoint-hub`, whatever address it dials: a hub moved
    to 127.0.0.2 (in none of its certificate's names) keeps its tills without new
    certificates. Checked against the address dialled, the handshake failed."""
    enrollment = hub.enroll("till-1", tmp_path / "till")
    hub.stop()
    moved = hub.server.start("127.0.0.2:0")
    san = x509.load_pem_x509_certificate(hub.dir.keys.server_cert.read_bytes()).extensions
    ips = san.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.2" not in {str(ip) for ip in ips.get_values_for_type(x509.IPAddress)}
    link = HubLink(f"127.0.0.2:{moved}", enrollment)
    try:
        assert link.probe(CONNECT_S)
        chunks = list(
            link.stub.PullSnapshot(pb.PullSnapshotRequest(device_id="till-1"), timeout=TIMEOUT)
        )
        assert chunks and chunks[0].version == 1
    finally:
        link.close()


def test_a_server_certificate_of_the_hubs_ca_without_the_hub_name_is_refused(
    tmp_path: Path,
) -> None:
    """A certificate of the hub's own CA that does not name `tillpoint-hub` (here one for
    127.0.0.1 and `localhost`, the very address dialled) is no hub's: the till fails the
    handshake and says so."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), start=False)
    try:
        enrollment = hub.enroll("till-1", tmp_path / "till")
        serve_with_certificate(hub, "localhost", ["localhost"])
        link = HubLink(hub.address, enrollment)
        try:
            with pytest.raises(grpc.RpcError) as err:
                list(
                    link.stub.PullSnapshot(
                        pb.PullSnapshotRequest(device_id="till-1"), timeout=TIMEOUT
                    )
                )
            message = link.failed(err.value)
            assert message.startswith("the TLS handshake with the hub failed"), message
            assert not link.online
        finally:
            link.close()
    finally:
        hub.stop()


# ---------------------------------------------------------------- dates, shapes (by hand)


def certificate(pem: bytes | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def test_hub_init_and_enroll_make_certificates_of_the_stated_lives(
    tmp_path: Path, cli: CLI
) -> None:
    """The CA lives 20 years of 365 days, the hub's and a till's certificates 5 × 365
    days (1825), each valid from an hour before it was made (a clock an hour behind
    takes it). The CA signs certificates, not CAs (path length 0); the others are no CA."""
    hub_dir = tmp_path / "hub"
    before = datetime.now(UTC).replace(microsecond=0)
    made = cli("hub", "init", "--hub-dir", hub_dir, "--json")
    assert made.code == 0, made.err
    out = tmp_path / "till-1.json"
    enrolled = cli(
        "hub",
        "enroll",
        "till-1",
        "--hub-dir",
        hub_dir,
        "--address",
        "hub.example:50070",
        "--out",
        out,
        "--json",
    )
    assert enrolled.code == 0, enrolled.err
    after = datetime.now(UTC)
    keys = pki.HubKeys(hub_dir / "keys")
    ca = certificate(keys.ca_cert.read_bytes())
    server = certificate(keys.server_cert.read_bytes())
    bundle = json.loads(out.read_text(encoding="utf-8"))
    device = certificate(bundle["certificate"])
    hour = timedelta(hours=1)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == timedelta(days=7300) + hour
    for cert in (ca, server, device):
        assert before - hour <= cert.not_valid_before_utc <= after - hour
    for cert in (server, device):
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=1825) + hour
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert basic.critical and basic.value.ca is False
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is True and basic.value.path_length == 0
    # the bundle's shape: what `sync install` reads, and what a person reads of it
    assert set(bundle) == {
        "format",
        "deviceId",
        "hubAddress",
        "caCertificate",
        "certificate",
        "privateKey",
        "snapshotPublicKey",
        "certificateFingerprint",
        "certificateExpiresAt",
    }
    assert bundle["format"] == "tillpoint-enrollment/1"
    assert bundle["deviceId"] == "till-1" and bundle["hubAddress"] == "hub.example:50070"
    assert bundle["caCertificate"] == keys.ca_cert.read_text(encoding="ascii")
    assert bundle["snapshotPublicKey"] == keys.snapshot_pub.read_text(encoding="ascii")
    assert bundle["certificateExpiresAt"] == device.not_valid_after_utc.isoformat()
    assert bundle["certificateFingerprint"] == enrolled.json()["fingerprint"]
    assert enrolled.json()["certificateExpiresAt"] == bundle["certificateExpiresAt"]
    assert out.read_text(encoding="utf-8").endswith("}\n")
    # installed: the marker names the device, the hub's address, the certificate
    installed = cli("sync", "install", out, "--json")
    assert installed.code == 0, installed.err
    marker = json.loads((tmp_path / "data" / "enrollment" / "enrollment.json").read_text())
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = device.public_bytes(serialization.Encoding.DER)
    assert marker["certificateFingerprint"] == hashlib.sha256(der).hexdigest()
    assert marker["certificateFingerprint"] == bundle["certificateFingerprint"]
    assert marker["hubAddress"] == "hub.example:50070" and marker["deviceId"] == "till-1"
    ends = device.not_valid_after_utc.isoformat().replace("+00:00", "Z")
    assert marker["certificateExpiresAt"] == ends == installed.json()["certificateExpiresAt"]
    loaded = pki.load_enrollment(tmp_path / "data")
    assert loaded is not None and loaded.hub_address == "hub.example:50070"


def test_a_certificate_is_valid_from_its_first_to_its_last_second_inclusive(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """RFC 5280: a certificate is valid at notBefore and at notAfter themselves. The edge
    by the till's own words: valid at its last second, "expired at …" a microsecond on;
    valid at its first, "valid only from …" a microsecond before."""
    enrollment = hub.enroll("till-1", tmp_path / "till")
    cert = certificate(enrollment.cert.read_bytes())
    first, last = cert.not_valid_before_utc, cert.not_valid_after_utc
    tick = timedelta(microseconds=1)
    assert enrollment.certificate_problem(first) is None
    assert enrollment.certificate_problem(last) is None
    late = enrollment.certificate_problem(last + tick)
    assert late is not None and late.startswith(
        f"this till's certificate expired at {last.isoformat().replace('+00:00', 'Z')}:"
    )
    assert "hub enroll till-1 --renew" in late
    early = enrollment.certificate_problem(first - tick)
    assert early is not None and early.startswith(
        f"this till's certificate is valid only from"
        f" {first.isoformat().replace('+00:00', 'Z')} and this machine's clock says"
    )
    assert early.endswith("set the clock right (NTP)")
    # `now` is the moment judged, not the wall clock (a till's status and its reminder)
    pem = enrollment.cert.read_bytes()
    assert pki.certificate_problem(pem, "x", "y", now=last + timedelta(days=1)) is not None
    assert pki.certificate_problem(pem, "x", "y", now=first + timedelta(minutes=1)) is None


def _bundle(hub: LoopbackHub, device: str = "till-1", **at: datetime) -> dict[str, object]:
    made = pki.issue_device(hub.dir.keys, device, **at)
    return pki.make_bundle(hub.dir.keys, made, hub.address)


def _ec_public_pem() -> str:
    from cryptography.hazmat.primitives import serialization

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _ed25519_private_pem() -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return pki._pem_key(ed25519.Ed25519PrivateKey.generate()).decode()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda b, h: {**b, "format": "tillpoint-enrollment/2"}, "not an enrolment bundle"),
        (lambda b, h: [b], "not an enrolment bundle (expected format tillpoint-enrollment/1)"),
        (
            lambda b, h: {k: v for k, v in b.items() if k != "privateKey"},
            "the enrolment bundle lacks privateKey",
        ),
        (lambda b, h: {**b, "certificate": "-----BEGIN"}, "the enrolment bundle is damaged"),
        (
            lambda b, h: {**b, "snapshotPublicKey": _ec_public_pem()},
            "the bundle's snapshot key is not an Ed25519 public key",
        ),
        (  # the hub's own certificate of another device, under this device's name
            lambda b, h: {
                **_bundle(h, "till-2"),
                "deviceId": "till-1",
            },
            "the bundle's certificate is not for this device",
        ),
        (
            lambda b, h: {**b, "privateKey": _ed25519_private_pem()},
            "the bundle's private key does not match its certificate",
        ),
        (
            lambda b, h: _bundle(h, now=datetime.now(UTC) + timedelta(days=2)),
            "the bundle's certificate is valid only from",
        ),
    ],
    ids=[
        "format",
        "not-an-object",
        "no-key",
        "damaged",
        "snapshot-key-ec",
        "other-device",
        "key-not-ec",
        "not-yet-valid",
    ],
)
def test_sync_install_refuses_a_bundle_it_cannot_trust_in_one_line(
    hub: LoopbackHub, tmp_path: Path, cli: CLI, change: object, words: str
) -> None:
    bundle = change(_bundle(hub), hub)  # type: ignore[operator]
    run = cli("sync", "install", bundle)
    assert run.code == 2, (run.code, run.err)
    assert words in run.err and run.err.count("\n") == 1, run.err
    assert not pki.is_enrolled(tmp_path / "data")


def test_a_bundle_without_the_hubs_address_is_installed_with_none(
    hub: LoopbackHub, tmp_path: Path, cli: CLI
) -> None:
    bundle = {k: v for k, v in _bundle(hub).items() if k != "hubAddress"}
    run = cli("sync", "install", bundle, "--json")
    assert run.code == 0, run.err
    assert run.json()["hubAddress"] == ""
    loaded = pki.load_enrollment(tmp_path / "data")
    assert loaded is not None and loaded.hub_address == "" and loaded.device_id == "till-1"


# ---------------------------------------------------------------- the link's online state


def test_the_links_online_state_follows_what_the_hub_answers(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """Online once the hub answers; an error the hub answers (INVALID_ARGUMENT) leaves it
    online and counts as contact; UNAVAILABLE (the hub stopped) takes it offline; each
    flip sets `changed`; recovery listeners run on the way back only, once."""
    enrollment = hub.enroll("till-1", tmp_path / "till")
    link = HubLink(hub.address, enrollment)
    recovered: list[int] = []
    link.on_recovery(lambda: recovered.append(1))
    try:
        assert link.online is False and link.last_contact is None
        wait_for(lambda: link.probe(CONNECT_S), timeout=30)
        assert link.online and link.changed.is_set() and link.last_failure is None
        assert recovered  # the channel's READY, the probe's `ok`, or both: at least once
        recovered.clear()
        link.changed.clear()
        link.ok()  # online already: no flip, no recovery
        assert not link.changed.is_set() and recovered == []
        contact = link.last_contact
        assert contact is not None
        bad = pb.AuthorizeRedemptionRequest(
            device_id="till-1", receipt_id="r-1", customer_id="c-1", points=-1
        )
        with pytest.raises(grpc.RpcError) as err:
            link.stub.AuthorizeRedemption(bad, timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        message = link.failed(err.value)
        assert message.startswith("hub call failed: INVALID_ARGUMENT:"), message
        assert link.online and not link.changed.is_set()
        assert link.last_failure == message
        assert link.last_contact is not None and link.last_contact > contact
        hub.stop()
        with pytest.raises(grpc.RpcError) as err:
            link.stub.AuthorizeRedemption(bad, timeout=TIMEOUT)
        message = link.failed(err.value)
        assert message.startswith("the hub is unreachable"), message
        assert link.online is False and link.changed.is_set() and link.last_failure == message
        link.changed.clear()
        link.failed(err.value)  # offline already: no flip
        assert not link.changed.is_set()
        hub.start()
        wait_for(lambda: link.probe(CONNECT_S), timeout=30)
        assert link.online and link.changed.is_set() and link.last_failure is None
        wait_for(lambda: recovered, timeout=10)
        # refused (revoked): the hub answered, but this till is cut off — offline, and
        # the words say the way back
        hub.store.revoke("till-1", datetime.now(UTC))
        link.changed.clear()
        with pytest.raises(grpc.RpcError) as err:
            link.stub.AuthorizeRedemption(bad, timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        message = link.failed(err.value)
        assert message.startswith("the hub refused this till: "), message
        assert message.endswith(f"({enrollment.renew_hint()})"), message
        assert link.online is False and link.changed.is_set()
    finally:
        link.close()


def test_a_call_the_links_close_cancels_says_nothing_of_the_hub(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """`tillpoint run`'s stop closes the link under its calls: they end CANCELLED, which
    would otherwise read as the hub gone (CANCELLED is one of the unreachable codes)."""
    enrollment = hub.enroll("till-1", tmp_path / "till")
    link = HubLink(hub.address, enrollment)
    wait_for(lambda: link.probe(CONNECT_S), timeout=30)
    stream = link.stub.Subscribe(pb.SubscribeRequest(device_id="till-1"), timeout=60)
    first = next(stream)  # the stream is open
    assert first is not None
    errors: list[grpc.RpcError] = []

    def read() -> None:
        try:
            for _ in stream:
                pass
        except grpc.RpcError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    link.changed.clear()
    link.close()
    reader.join(timeout=30)
    assert errors and errors[0].code() == grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]
    message = link.failed(errors[0])
    assert message.startswith("hub call failed: CANCELLED"), message
    assert link.online and not link.changed.is_set()


# ---------------------------------------------------------------- the reminder's words


@pytest.mark.parametrize(
    ("left", "words"),
    [
        (timedelta(days=30) - timedelta(microseconds=1), "in 29 days"),
        (timedelta(days=2, hours=1), "in 2 days"),
        (timedelta(days=1), "in 1 day"),
        (timedelta(days=1) - timedelta(seconds=1), "in 23 hours"),
        (timedelta(hours=2) - timedelta(seconds=1), "in 1 hour"),
        (timedelta(hours=1), "in 1 hour"),
        (timedelta(hours=1) - timedelta(seconds=1), "in less than an hour"),
        (timedelta(0), "in less than an hour"),  # at its last moment it is still valid
    ],
)
def test_a_certificate_ending_soon_is_told_in_days_then_hours(left: timedelta, words: str) -> None:
    now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    note = pki.expiry_note(now + left, now, "x's", "renew")
    assert note is not None and note[0] == logging.WARNING, note
    ends = (now + left).isoformat().replace("+00:00", "Z")
    assert note[1] == f"x's certificate expires at {ends} ({words}): renew"


def test_the_warning_begins_thirty_days_before_and_the_error_at_the_end() -> None:
    now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert pki.expiry_note(now + timedelta(days=30), now, "x's", "renew") is None
    assert pki.expiry_note(None, now, "x's", "renew") is None
    level, text = pki.expiry_note(now - timedelta(microseconds=1), now, "x's", "renew") or (0, "")
    assert level == logging.ERROR
    assert text == "x's certificate expired at 2026-12-07T08:59:59.999999Z: renew"


# ---------------------------------------------------------------- a damaged certificate


def test_hub_serve_refuses_a_damaged_server_certificate_in_one_line(
    tmp_path: Path, cli: CLI
) -> None:
    """A server.pem cut short (a copy to another hub server that stopped half way) is
    refused at start, exit 2 (the packaged unit does not restart it in a loop), with the
    way out; the renewal mends it."""
    root = tmp_path / "hub"
    env = {**os.environ, "TILLPOINT_HUB_DIR": str(root), "TILLPOINT_LOG__FORMAT": "text"}
    assert cli("hub", "init", "--hub-dir", root).code == 0  # in-process; `serve` is the process
    keys = pki.HubKeys(root / "keys")
    pem = keys.server_cert.read_bytes()
    keys.server_cert.write_bytes(pem[: len(pem) // 2])
    served = subprocess.run(
        [EXE, "hub", "serve", "--listen", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 2, served.stderr
    assert "certificate is unreadable" in served.stderr, served.stderr
    assert "hub init --renew-server" in served.stderr
    assert len(served.stderr.strip().splitlines()) == 1, served.stderr


def test_a_link_to_a_hub_that_is_down_tells_no_recovery_while_it_retries(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """The channel's own attempts (CONNECTING, TRANSIENT_FAILURE, again) are not the hub
    answering: only READY is, and only while the link is offline. A recovery told at
    each attempt made the sync loops drop their backoffs and retry at once, every 0.3 to
    3 s, the whole outage long."""
    enrollment = hub.enroll("till-1", tmp_path / "till")
    hub.stop()
    link = HubLink(hub.address, enrollment)
    recovered: list[int] = []
    link.on_recovery(lambda: recovered.append(1))
    try:
        failure = grpc.ChannelConnectivity.TRANSIENT_FAILURE
        wait_for(lambda: link._connectivity == failure, timeout=30)
        assert recovered == [] and not link.online
        assert link.probe(0.5) is False and not link.online  # `tillpoint sync now`'s question
        hub.start()
        wait_for(lambda: recovered, timeout=30)  # READY by itself, within its backoff
        assert not link.online  # the channel's READY is no call answered
        count = len(recovered)
        link.ok()  # the first call answered: online, told once more
        assert link.online and len(recovered) == count + 1
    finally:
        link.close()


def test_a_till_whose_certificate_file_went_missing_says_so_not_that_the_hub_is_away(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    """`device.pem` gone under a running till (a restore of the wrong folder, a hand
    clean-up): its calls fail the handshake, and the till names its own file and the
    way back instead of "the hub is unreachable"."""
    enrollment = hub.enroll("till-1", tmp_path / "till")
    link = HubLink(hub.address, enrollment)
    try:
        enrollment.cert.unlink()
        hub.stop()
        with pytest.raises(grpc.RpcError) as err:
            list(
                link.stub.PullSnapshot(pb.PullSnapshotRequest(device_id="till-1"), timeout=TIMEOUT)
            )
        message = link.failed(err.value)
        assert message.startswith("this till's certificate is unreadable ("), message
        assert message.endswith(
            f": on the hub run 'tillpoint hub enroll till-1 --renew --address {hub.address}',"
            " then 'tillpoint sync install BUNDLE' here"
        ), message
    finally:
        link.close()


def test_a_checker_on_the_hubs_host_dials_127_0_0_1_without_naming_the_hub(
    hub: LoopbackHub,
) -> None:
    """A load balancer's or monitor's gRPC health check (docs/HUB.md) with a certificate
    of `hub enroll` and the hub's CA, dialling 127.0.0.1 as most checkers do without a
    server name to check: the hub's certificate names 127.0.0.1 too, so it is served."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    made = pki.issue_device(hub.dir.keys, "monitor")
    hub.store.enroll("monitor", made.fingerprint, datetime.now(UTC))
    creds = grpc.ssl_channel_credentials(
        root_certificates=hub.dir.keys.ca_cert.read_bytes(),
        private_key=made.key_pem,
        certificate_chain=made.cert_pem,
    )
    with grpc.secure_channel(hub.address, creds) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_device_id_of_capitals_letters_and_a_percent_sign_is_named_as_it_is(
    hub: LoopbackHub, tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate's common name is the device id exactly (the hub reads the device
    from it: `Касса-1` is not `касса-1`); its URI takes the id with everything but ASCII,
    and `%`, percent-encoded as UTF-8. Enrolled through the CLI, installed, served."""
    device = "Касса-1%A"
    out = tmp_path / "bundle.json"
    hub_dir = hub.root
    enrolled = cli(
        "hub", "enroll", device, "--hub-dir", hub_dir, "--address", hub.address, "--out", out
    )
    assert enrolled.code == 0, enrolled.err
    bundle = json.loads(out.read_text(encoding="utf-8"))
    cert = certificate(bundle["certificate"])
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert [n.value for n in names] == [device]
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:tillpoint:device:%D0%9A%D0%B0%D1%81%D1%81%D0%B0-1%25A"
    ]
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", device)
    installed = cli("sync", "install", out, "--json")
    assert installed.code == 0, installed.err
    enrollment = pki.load_enrollment(tmp_path / "data")
    assert enrollment is not None and enrollment.device_id == device
    link = HubLink(hub.address, enrollment)
    try:
        chunks = list(
            link.stub.PullSnapshot(pb.PullSnapshotRequest(device_id=device), timeout=TIMEOUT)
        )
        assert chunks and chunks[0].version == 1
    finally:
        link.close()


@pytest.mark.parametrize("kept", ["ca.key", "snapshot.key"])
def test_hub_init_never_makes_new_keys_beside_a_secret_one_left(
    tmp_path: Path, cli: CLI, kept: str
) -> None:
    """Keys lost but for the CA's key or the snapshot key: new ones would replace the
    very key every till trusts (a new snapshot key: every till refuses every snapshot
    until it gets a new bundle). `hub init` refuses in one line, and keeps the file."""
    hub_dir = tmp_path / "hub"
    assert cli("hub", "init", "--hub-dir", hub_dir).code == 0
    keys = pki.HubKeys(hub_dir / "keys")
    secret = (keys.root / kept).read_bytes()
    for path in keys.root.iterdir():
        if path.name != kept:
            path.unlink()
    again = cli("hub", "init", "--hub-dir", hub_dir)
    assert again.code == 1, again.out  # EnrollmentError (not a unit's command: no exit 2 needed)
    assert "holds some of the hub's keys but not all" in again.err, again.err
    assert again.err.count("\n") == 1, again.err
    assert (keys.root / kept).read_bytes() == secret
    assert not keys.ca_cert.exists()


def test_a_renewed_server_certificate_keeps_the_hubs_addresses_once_each(
    tmp_path: Path, cli: CLI
) -> None:
    """`hub init --renew-server` keeps the names and addresses of the certificate it
    replaces (a checker dials the hub by its address) and adds the new ones; 127.0.0.1
    once, not once more at each renewal."""
    hub_dir = tmp_path / "hub"
    assert cli("hub", "init", "--hub-dir", hub_dir, "--host", "10.1.2.3").code == 0
    for host in ("hub.example", "10.1.2.4"):
        renewed = cli("hub", "init", "--hub-dir", hub_dir, "--renew-server", "--host", host)
        assert renewed.code == 0, renewed.err
    cert = certificate(pki.HubKeys(hub_dir / "keys").server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert sorted(ips) == ["10.1.2.3", "10.1.2.4", "127.0.0.1"]
    assert {"tillpoint-hub", "localhost", "hub.example"} <= set(
        san.get_values_for_type(x509.DNSName)
    )
