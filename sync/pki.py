"""The hub's keys and certificates, and the enrolment bundle a till installs (the contract §9).

The hub keeps, in ``<hub dir>/keys/``:

- ``ca.key`` / ``ca.pem``: its own certificate authority (ECDSA P-256). It signs the hub's
  server certificate and every device certificate; nothing else is trusted on either side.
- ``server.key`` / ``server.pem``: the hub's TLS identity. Its subject alternative names
  always include ``tillpoint-hub`` (the name agents check, whatever address they dial)
  and the host names given to ``hub init``.
- ``snapshot.key`` / ``snapshot.pub``: the Ed25519 key that signs snapshots.

``hub enroll DEVICE`` makes a key pair and a certificate (CN = the device id, and a SAN
URI ``urn:tillpoint:device:<id>``) and writes them with the CA certificate and the
snapshot public key into one JSON bundle, which ``tillpoint sync install`` puts into the
till's ``<data dir>/enrollment/``. A till with that directory is *enrolled*: from then on
it trusts only snapshots signed by its hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tillpoint.agent.config import DEVICE_ID_MAX, device_id_problem
from tillpoint.agent.db import fsync_path, write_refused
from tillpoint.agent.errors import InputError, TillpointError
from tillpoint.agent.files import write_whole

from . import ENROLLMENT_DIR, ENROLLMENT_FILE, RENEW_WARNING_DAYS, SET_JOURNAL
from . import is_enrolled as is_enrolled  # the marker, for this module's users

HUB_TLS_NAME = "tillpoint-hub"  # agents verify the hub's certificate against this name
DEVICE_URI_PREFIX = "urn:tillpoint:device:"
BUNDLE_FORMAT = "tillpoint-enrollment/1"
CA_YEARS = 20
CERT_DAYS = 5 * 365
RENEW_SERVER = "run 'tillpoint hub init --renew-server' on the hub (the tills need nothing new)"


class EnrollmentError(TillpointError):
    pass


class KeyMaterialRefused(EnrollmentError):
    """A key or certificate the operator must mend (its mode, its dates): exit 2, which the
    packaged units do not restart in a loop (RestartPreventExitStatus=2)."""

    exit_code = 2


# ---------------------------------------------------------------- small helpers


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret: mode 0600 from the start, fsynced, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, data)


def _write_set(root: Path, files: list[tuple[str, bytes, bool]]) -> None:
    """Replace several files of `root` as one: a crash leaves the old set or the new one,
    never a key beside another key's certificate (every TLS handshake then fails, and a
    till says only that the hub is unreachable). `files`: (name, bytes, private).

    Each file is written fsynced as `<name>.next`; the journal naming them is the commit
    point; then each is renamed into place (`finish_set`, which readers call too)."""
    root.mkdir(parents=True, exist_ok=True)
    finish_set(root)
    for stray in root.glob("*.next"):  # a set a crash left before its commit point
        stray.unlink(missing_ok=True)
    path = root
    try:
        for name, data, private in files:
            path = root / f"{name}.next"
            (_write_private if private else _write_public)(path, data)
        # every `.next` named on the disk before the journal that commits them: else a
        # power cut could keep the journal and lose one, and finish_set would leave that
        # file old
        fsync_path(root)
        path = root / SET_JOURNAL
        _write_public(path, json.dumps([name for name, _, _ in files]).encode())
        fsync_path(root)
    except OSError as exc:
        # a full disk or the file size limit: exit 1 naming the file and why, a mode
        # exit 2 (it was "internal error: OSError: [Errno 27] File too large" at `hub
        # init`: review 40, rev40c); the set not committed, its files removed
        for stray in root.glob("*.next"):
            stray.unlink(missing_ok=True)
        raise write_refused(path, exc, f"cannot write the keys in {root}") from None
    finish_set(root)


def finish_set(root: Path) -> None:
    """Finish a committed `_write_set` a crash interrupted (rename the files it had not
    renamed yet); nothing when none is. A reader calls it before it reads the set. Files of
    a set never committed are left (their writer, or the next one, removes them)."""
    journal = root / SET_JOURNAL
    try:
        names = json.loads(journal.read_bytes())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:  # written by rename: whole or absent (or by hand)
        raise KeyMaterialRefused(
            f"{journal} is unreadable ({exc}): install the keys again"
        ) from None
    try:
        for name in names:
            # FileNotFoundError: renamed already (before the crash, or by another reader)
            with contextlib.suppress(FileNotFoundError):
                os.replace(root / f"{name}.next", root / str(name))
        fsync_path(root)
        journal.unlink(missing_ok=True)
        fsync_path(root)
    except OSError as exc:
        raise KeyMaterialRefused(
            f"cannot finish replacing the keys in {root} ({exc}): run the command again as"
            " the user that owns them"
        ) from None


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER, hex: what the hub stores per enrolled device."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def ca_identity(ca_pem: bytes) -> str:
    """Which hub a till trusts: the SHA-256 of its CA certificate's DER (hex, 32 digits),
    the same for every PEM text of it (line endings, blank lines, a trailing newline: a
    ca.pem copied to another hub server, a bundle through another tool). A text that is
    no certificate is told by its bytes (never the same as a certificate's)."""
    try:
        der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        return "pem:" + hashlib.sha256(ca_pem).hexdigest()[:28]
    return hashlib.sha256(der).hexdigest()[:32]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tillpoint"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def check_private_mode(path: Path) -> None:
    """Refuse a private key other users can read (or write): it must stay the hub's or the
    till's own. Written 0600 by tillpoint; a copy made without keeping the mode is what
    this catches (EnrollmentError: exit 2, and the way out)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return  # missing: the reader says so
    if mode & 0o077:
        raise KeyMaterialRefused(
            f"{path} is a private key other users can read (mode {mode:04o}):"
            f" run 'chmod 600 {path}' (and check who could have copied it)"
        )


def certificate_time(moment: datetime | None) -> str:
    """A certificate's moment as RFC 3339 in UTC with a "Z" ("" for none): how every
    `…ExpiresAt` of the trust chain is shown."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else ""


def certificate_problem(
    cert_pem: bytes, whose: str, renew: str, *, now: datetime | None = None
) -> str | None:
    """Why a certificate cannot be used now (expired, or not valid yet by this clock), in
    one line with the way out (`renew`), or None while it is valid."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        return f"{whose} certificate is unreadable ({exc}): {renew}"
    moment = now or datetime.now(UTC)
    if moment > cert.not_valid_after_utc:
        return (
            f"{whose} certificate expired at {certificate_time(cert.not_valid_after_utc)}: {renew}"
        )
    if moment < cert.not_valid_before_utc:
        return (
            f"{whose} certificate is valid only from {certificate_time(cert.not_valid_before_utc)}"
            f" and this machine's clock says {certificate_time(moment)}: set the clock right (NTP)"
        )
    return None


# How often a running process (`tillpoint run`, `hub serve`) repeats that a certificate
# expires within RENEW_WARNING_DAYS, or has expired: a warning at start alone was one line
# in a log of months, and a till that runs from one upgrade to the next never restarts.
REMIND_EVERY_S = 86400.0


class CertificateReminder:
    """Logs, at the first `check` and then at most once every `every_s`, what `look` says
    of a certificate: (level, message) while it expires within RENEW_WARNING_DAYS or has
    expired, None while it is fine. `look` (a file read, a certificate parsed) runs once
    an `every_s` at most, so a loop may call `check` as often as it turns."""

    def __init__(
        self,
        look: Callable[[datetime], tuple[int, str] | None],
        logger: logging.Logger,
        every_s: float = REMIND_EVERY_S,
    ) -> None:
        self.look = look
        self.log = logger
        self.every_s = every_s
        self._last: float | None = None  # (monotonic) the last look

    def check(self) -> tuple[int, str] | None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return None
        self._last = now
        try:
            found = self.look(datetime.now(UTC))
        except Exception:  # a reminder never stops the loop that asks it
            self.log.warning("the certificate's expiry could not be read", exc_info=True)
            return None
        if found is not None:
            self.log.log(found[0], "%s", found[1])
        return found


def expiry_note(
    not_after: datetime | None, now: datetime, whose: str, renew: str
) -> tuple[int, str] | None:
    """What a reminder says of a certificate ending at `not_after` (see CertificateReminder)."""
    if not_after is None:
        return None
    if now > not_after:
        expired = f"{whose} certificate expired at {certificate_time(not_after)}: {renew}"
        return logging.ERROR, expired
    if not_after - now < timedelta(days=RENEW_WARNING_DAYS):
        return (
            logging.WARNING,
            f"{whose} certificate expires at {certificate_time(not_after)}"
            f" (in {_days_left(not_after - now)}): {renew}",
        )
    return None


def _days_left(left: timedelta) -> str:
    days = left.days
    if days >= 1:
        return f"{days} day{'s' if days != 1 else ''}"
    hours = int(left.total_seconds() // 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}" if hours else "less than an hour"


def certificate_not_after(cert_pem: bytes) -> datetime | None:
    try:
        return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    except ValueError:
        return None


def _load_key(path: Path) -> Any:
    check_private_mode(path)
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise EnrollmentError(f"{path} is missing: run `tillpoint hub init` first") from None
    except (OSError, ValueError) as exc:
        raise EnrollmentError(f"cannot read the key {path}: {exc}") from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise EnrollmentError(f"{path} is missing: run `tillpoint hub init` first") from None
    except (OSError, ValueError) as exc:
        raise EnrollmentError(f"cannot read the certificate {path}: {exc}") from None


# ---------------------------------------------------------------- the hub's keys


@dataclass(frozen=True)
class HubKeys:
    """Paths of the hub's key material (``<hub dir>/keys``)."""

    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def snapshot_key(self) -> Path:
        return self.root / "snapshot.key"

    @property
    def snapshot_pub(self) -> Path:
        return self.root / "snapshot.pub"

    def exists(self) -> bool:
        return all(
            p.exists()
            for p in (
                self.ca_key,
                self.ca_cert,
                self.server_key,
                self.server_cert,
                self.snapshot_key,
                self.snapshot_pub,
            )
        )

    def signing_key(self) -> ed25519.Ed25519PrivateKey:
        """The snapshot key, refused when `snapshot.pub` (what every bundle gives the tills)
        is not its public half: each till would refuse every snapshot signed with it."""
        key = _load_key(self.snapshot_key)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise EnrollmentError(f"{self.snapshot_key} is not an Ed25519 key")
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        try:
            pub = serialization.load_pem_public_key(self.snapshot_pub.read_bytes())
        except FileNotFoundError:
            raise EnrollmentError(
                f"{self.snapshot_pub} is missing: restore it from a backup"
            ) from None
        except (OSError, ValueError) as exc:
            raise EnrollmentError(f"cannot read {self.snapshot_pub}: {exc}") from None
        if not isinstance(pub, ed25519.Ed25519PublicKey) or pub.public_bytes(
            *raw
        ) != key.public_key().public_bytes(*raw):
            raise KeyMaterialRefused(
                f"{self.snapshot_pub} is not the public half of {self.snapshot_key}: the tills"
                " would refuse every snapshot; restore both files from the same backup"
            )
        return key

    def server_credentials_material(self) -> tuple[bytes, bytes, bytes]:
        """(server key PEM, server certificate PEM, CA certificate PEM), refused while
        the server key is readable by others or the server certificate cannot be used
        (expired, or not valid yet by this clock): tills would fail the handshake and
        sell OFFLINE, and say only that the hub is unreachable."""
        finish_set(self.root)
        check_private_mode(self.server_key)
        try:
            material = (
                self.server_key.read_bytes(),
                self.server_cert.read_bytes(),
                self.ca_cert.read_bytes(),
            )
        except FileNotFoundError as exc:
            raise EnrollmentError(
                f"{exc.filename} is missing: run `tillpoint hub init` first"
            ) from None
        problem = certificate_problem(
            material[1], f"the hub's server ({self.server_cert})", RENEW_SERVER
        )
        if problem:
            raise KeyMaterialRefused(problem)
        return material

    def server_not_after(self) -> datetime | None:
        try:
            return certificate_not_after(self.server_cert.read_bytes())
        except OSError:
            return None

    def renew_server(
        self, hosts: list[str] | None = None, *, now: datetime | None = None
    ) -> datetime:
        """A new server key and certificate from the hub's own CA (the tills trust the
        CA and check the name `tillpoint-hub`, so nothing changes on them). The names of
        the current certificate are kept, `hosts` added. Returns the new expiry."""
        finish_set(self.root)
        ca_key = _load_key(self.ca_key)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise EnrollmentError(f"{self.ca_key} is not the hub's CA key")
        ca_cert = _load_cert(self.ca_cert)
        names = _server_names()
        try:
            old = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
            san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names += [str(n) for n in san.get_values_for_type(x509.DNSName)]
            names += [
                str(ip) for ip in san.get_values_for_type(x509.IPAddress) if str(ip) != "127.0.0.1"
            ]  # _san adds 127.0.0.1 itself
        except (OSError, ValueError, x509.ExtensionNotFound):
            pass  # a missing or damaged certificate: the default names
        key, cert = _server_identity(ca_key, ca_cert, [*names, *(hosts or [])], now)
        _write_set(
            self.root,
            [
                (self.server_key.name, _pem_key(key), True),
                (self.server_cert.name, _pem_cert(cert), False),
            ],
        )
        return cert.not_valid_after_utc


def _server_names() -> list[str]:
    """The names every hub server certificate carries (the tills check `tillpoint-hub`)."""
    return [HUB_TLS_NAME, "localhost", socket.gethostname()]


def _server_identity(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
    now: datetime | None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new server key and its TLS certificate from the hub's CA, for `names`."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(
        ca_key,
        ca_cert,
        key.public_key(),
        HUB_TLS_NAME,
        _san(names),
        ExtendedKeyUsageOID.SERVER_AUTH,
        now or datetime.now(UTC),
    )
    return key, cert


def init_hub_keys(
    keys: HubKeys, hosts: list[str] | None = None, *, now: datetime | None = None
) -> bool:
    """Create the CA, the server certificate and the snapshot key if they are missing.

    Returns True when keys were made, False when they already existed (nothing changes:
    re-running never replaces a CA that devices trust).
    """
    if keys.exists():
        return False
    if any(p.exists() for p in (keys.ca_key, keys.snapshot_key)):
        raise EnrollmentError(
            f"{keys.root} holds some of the hub's keys but not all: restore the missing"
            " files from a backup rather than making new ones"
        )
    moment = now or datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("tillpoint hub CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - timedelta(hours=1))
        .not_valid_after(moment + timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server_cert = _server_identity(
        ca_key, ca_cert, [*_server_names(), *(hosts or [])], moment
    )
    signing = ed25519.Ed25519PrivateKey.generate()
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # one set (`_write_set`): a disk that filled, or the file size limit, after the first
    # file left `ca.key` alone, and every `hub init` after it said "holds some of the
    # hub's keys but not all: restore the missing files from a backup" of keys nobody
    # had used (review 40, rev40c)
    _write_set(
        keys.root,
        [
            (keys.ca_key.name, _pem_key(ca_key), True),
            (keys.ca_cert.name, _pem_cert(ca_cert), False),
            (keys.server_key.name, _pem_key(server_key), True),
            (keys.server_cert.name, _pem_cert(server_cert), False),
            (keys.snapshot_key.name, _pem_key(signing), True),
            (keys.snapshot_pub.name, public, False),
        ],
    )
    return True


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    import ipaddress

    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    entries.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return x509.SubjectAlternativeName(entries)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    san: x509.SubjectAlternativeName,
    usage: x509.ObjectIdentifier,
    moment: datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - timedelta(hours=1))
        .not_valid_after(moment + timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


# ---------------------------------------------------------------- device identity


def check_device_id(device_id: str) -> str:
    if device_id_problem(device_id):  # the till's configuration asks the same
        raise InputError(
            f"device id {device_id!r} is not usable: 1 to {DEVICE_ID_MAX} characters, no blanks"
            " or slashes"
        )
    return device_id


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    key_pem: bytes
    cert_pem: bytes
    fingerprint: str
    serial: int
    not_after: datetime


def _uri_part(device_id: str) -> str:
    """The id as a URI takes it: ASCII as it is, other characters (`касса-1`) and `%`
    percent-encoded as UTF-8 (the common name, which the hub reads, keeps the id)."""
    return "".join(c if c.isascii() and c != "%" else quote(c, safe="") for c in device_id)


def issue_device(keys: HubKeys, device_id: str, *, now: datetime | None = None) -> DeviceIdentity:
    """A new key pair and a certificate for `device_id`, signed by the hub's CA."""
    check_device_id(device_id)
    moment = now or datetime.now(UTC)
    ca_key = _load_key(keys.ca_key)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise EnrollmentError(f"{keys.ca_key} is not the hub's CA key")
    ca_cert = _load_cert(keys.ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + _uri_part(device_id))]
    )
    cert = _issue(
        ca_key,
        ca_cert,
        key.public_key(),
        device_id,
        san,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        moment,
    )
    pem = _pem_cert(cert)
    return DeviceIdentity(
        device_id=device_id,
        key_pem=_pem_key(key),
        cert_pem=pem,
        fingerprint=fingerprint(pem),
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
    )


def device_id_of(cert_pem: bytes) -> str | None:
    """The device id a client certificate names (its common name), or None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


# ---------------------------------------------------------------- the enrolment bundle


def make_bundle(keys: HubKeys, identity: DeviceIdentity, hub_address: str) -> dict[str, Any]:
    """The JSON document a till installs: its identity, whom to trust, where the hub is."""
    keys.signing_key()  # the pair checked: a bundle must carry the key snapshots are signed with
    try:
        ca_pem = keys.ca_cert.read_bytes()
        snapshot_pub = keys.snapshot_pub.read_bytes()
    except FileNotFoundError as exc:
        raise EnrollmentError(f"{exc.filename} is missing: run `tillpoint hub init`") from None
    return {
        "format": BUNDLE_FORMAT,
        "deviceId": identity.device_id,
        "hubAddress": hub_address,
        "caCertificate": ca_pem.decode(),
        "certificate": identity.cert_pem.decode(),
        "privateKey": identity.key_pem.decode(),
        "snapshotPublicKey": snapshot_pub.decode(),
        "certificateFingerprint": identity.fingerprint,
        "certificateExpiresAt": identity.not_after.isoformat(),
    }


def write_bundle(path: Path, bundle: dict[str, Any]) -> None:
    _write_private(path, (json.dumps(bundle, indent=2) + "\n").encode())


@dataclass(frozen=True)
class Enrollment:
    """What an enrolled till has in ``<data dir>/enrollment/``."""

    root: Path
    device_id: str
    hub_address: str

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.root / "device.pem"

    @property
    def key(self) -> Path:
        return self.root / "device.key"

    @property
    def snapshot_pub(self) -> Path:
        return self.root / "snapshot.pub"

    def snapshot_public_key(self) -> ed25519.Ed25519PublicKey:
        try:
            key = serialization.load_pem_public_key(self.snapshot_pub.read_bytes())
        except (OSError, ValueError) as exc:
            raise EnrollmentError(f"cannot read the hub's snapshot key: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise EnrollmentError(f"{self.snapshot_pub} is not an Ed25519 public key")
        return key

    def renew_hint(self) -> str:
        return (
            f"on the hub run 'tillpoint hub enroll {self.device_id} --renew --address"
            f" {self.hub_address or 'HOST:PORT'}', then 'tillpoint sync install BUNDLE' here"
        )

    def certificate_problem(self, now: datetime | None = None) -> str | None:
        """Why the hub cannot accept this till's certificate now (expired, or not valid
        yet by this till's clock), with the way out; None while it is valid."""
        try:
            pem = self.cert.read_bytes()
        except OSError as exc:
            return f"this till's certificate is unreadable ({exc}): {self.renew_hint()}"
        return certificate_problem(pem, "this till's", self.renew_hint(), now=now)

    def certificate_expires_at(self) -> datetime | None:
        try:
            return certificate_not_after(self.cert.read_bytes())
        except OSError:
            return None

    def channel_material(self) -> tuple[bytes, bytes, bytes]:
        """(CA certificate PEM, device key PEM, device certificate PEM)."""
        check_private_mode(self.key)
        try:
            return self.ca_cert.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()
        except OSError as exc:
            raise EnrollmentError(f"the enrolment files are unreadable: {exc}") from None


def enrollment_dir(data_dir: Path) -> Path:
    return Path(data_dir) / ENROLLMENT_DIR


def load_enrollment(data_dir: Path) -> Enrollment | None:
    root = enrollment_dir(data_dir)
    marker = root / ENROLLMENT_FILE
    finish_set(root)  # nothing unless a crash left a committed set (its journal)
    if not marker.is_file():
        return None
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
        return Enrollment(root, str(meta["deviceId"]), str(meta.get("hubAddress", "")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EnrollmentError(f"{marker} is damaged ({exc}): install the bundle again") from None


def install_bundle(data_dir: Path, bundle: Any, device_id: str) -> Enrollment:
    """Check an enrolment bundle and install it into the till's data directory."""
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise InputError(f"not an enrolment bundle (expected format {BUNDLE_FORMAT})")
    try:
        bundle_device = str(bundle["deviceId"])
        ca_pem = str(bundle["caCertificate"]).encode()
        cert_pem = str(bundle["certificate"]).encode()
        key_pem = str(bundle["privateKey"]).encode()
        pub_pem = str(bundle["snapshotPublicKey"]).encode()
        address = str(bundle.get("hubAddress", ""))
    except KeyError as exc:
        raise InputError(f"the enrolment bundle lacks {exc.args[0]}") from None
    if bundle_device != device_id:
        raise InputError(
            f"the bundle is for device {bundle_device!r} but this till is {device_id!r}:"
            f" install {device_id!r}'s own bundle (lost: on the hub 'tillpoint hub enroll"
            f" {device_id} --renew'), or, on a till that has sold nothing yet,"
            f' set device_id = "{bundle_device}" in the configuration first'
        )
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        pub = serialization.load_pem_public_key(pub_pem)
    except ValueError as exc:
        raise InputError(f"the enrolment bundle is damaged: {exc}") from None
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise InputError("the bundle's snapshot key is not an Ed25519 public key")
    if device_id_of(cert_pem) != device_id:
        raise InputError("the bundle's certificate is not for this device")
    try:
        # the signature, not only the names: every hub's CA has the same name
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise InputError("the bundle's certificate is not signed by the bundle's CA") from None
    problem = certificate_problem(
        cert_pem,
        "the bundle's",
        f"ask the hub for a new bundle ('tillpoint hub enroll {device_id} --renew')",
    )
    if problem:
        raise InputError(problem)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
        key.public_key().public_numbers() != cert.public_key().public_numbers()  # type: ignore[union-attr]
    ):
        raise InputError("the bundle's private key does not match its certificate")
    meta = {
        "deviceId": device_id,
        "hubAddress": address,
        "certificateFingerprint": fingerprint(cert_pem),
        "certificateExpiresAt": certificate_time(cert.not_valid_after_utc),
        "installedAt": datetime.now(UTC).isoformat(),
    }
    # One set with the marker: a till is enrolled once every file is in place, and a
    # renewal never leaves a new certificate beside the old key (`_write_set`).
    root = enrollment_dir(data_dir)
    _write_set(
        root,
        [
            ("ca.pem", ca_pem, False),
            ("device.pem", cert_pem, False),
            ("device.key", key_pem, True),
            ("snapshot.pub", pub_pem, False),
            (ENROLLMENT_FILE, (json.dumps(meta, indent=2) + "\n").encode(), False),
        ],
    )
    return Enrollment(root, device_id, address)
