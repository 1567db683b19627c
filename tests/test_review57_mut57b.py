"""Review 57 (mut57b): what review 55 (mut55a) left unrun of the till's trust in its hub
(`sync/pki.py`'s renewal, the hub's keys, the certificates issued, the bundle and the
marker; `sync/client.py`'s channel options), then the SQLite hub store's plumbing
(`sync/hub_sqlite.py`: its connections' pragmas, its connections per thread, its reads
and writes). Each test pins a rule that a surviving mutant broke and no test held.
Real parts: keys made by `hub init`, bundles by `hub enroll`, installed by `sync
install`, the reference hub over mTLS on loopback, real SQLite files and a second real
connection holding the file's write lock. docs/DECISIONS.md, "Review 57 (mut57b)",
lists the mutants."""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from tillpoint.sync import pki
from tillpoint.sync.hub_sqlite import BUSY_TIMEOUT_MS, SqliteHubStore

from .conftest import CLI

LONG_S = 60.0  # a wait on a loaded machine's thread: generous, never the verdict


# ---------------------------------------------------------------- the hub's keys (pki.py)


def certificate(pem: bytes | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def made_hub(cli: CLI, hub_dir: Path, *more: str) -> pki.HubKeys:
    made = cli("hub", "init", "--hub-dir", hub_dir, *more)
    assert made.code == 0, made.err
    return pki.HubKeys(hub_dir / "keys")


def enrolled(cli: CLI, hub_dir: Path, out: Path) -> dict[str, str]:
    run = cli(
        "hub", "enroll", "till-1", "--hub-dir", hub_dir, "--address", "hub:50070", "--out", out
    )
    assert run.code == 0, run.err
    bundle: dict[str, str] = json.loads(out.read_text(encoding="utf-8"))
    return bundle


def test_hub_init_run_again_says_the_keys_exist_and_changes_none(tmp_path: Path, cli: CLI) -> None:
    """Run again on a hub's keys, `hub init` keeps every file (a new CA would cut off
    every till) and says so: `"created": false` in its JSON, which a provisioning script
    reads (it was null with `init_hub_keys`' False made None: a script testing
    `created == false` took the keys for made)."""
    hub_dir = tmp_path / "hub"
    first = cli("hub", "init", "--hub-dir", hub_dir, "--json")
    assert first.code == 0 and first.json()["created"] is True, first.err
    keys = pki.HubKeys(hub_dir / "keys")
    before = {p.name: p.read_bytes() for p in keys.root.iterdir()}
    again = cli("hub", "init", "--hub-dir", hub_dir, "--json")
    assert again.code == 0, again.err
    assert again.json()["created"] is False
    assert {p.name: p.read_bytes() for p in keys.root.iterdir()} == before
    human = cli("hub", "init", "--hub-dir", hub_dir)
    assert human.out.startswith("hub keys already exist in"), human.out


def test_the_certificates_carry_the_extensions_a_tls_stack_expects(
    tmp_path: Path, cli: CLI
) -> None:
    """RFC 5280's forms, which BoringSSL (the tills' gRPC) checks: the CA signs
    certificates and revocation lists only (key usage, critical) and names its key
    (subject key identifier, never critical); the server's and a till's certificates
    are no CA (critical), say what they are for (server or client authentication only),
    name the CA's key (authority key identifier, never critical) and carry their names
    (not critical: the subject is not empty). The server's common name is the hub's
    name, a till's its device id. Renewed, the server's certificate is the same form."""
    hub_dir = tmp_path / "hub"
    keys = made_hub(cli, hub_dir)
    ca = certificate(keys.ca_cert.read_bytes())
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    signs = {
        name
        for name in (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        )
        if getattr(usage.value, name)
    }
    assert signs == {"key_cert_sign", "crl_sign"}
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ca.subject == ca.issuer
    bundle = enrolled(cli, hub_dir, tmp_path / "till-1.json")
    server_before = keys.server_cert.read_bytes()
    renewed = cli("hub", "init", "--hub-dir", hub_dir, "--renew-server")
    assert renewed.code == 0, renewed.err
    assert keys.server_cert.read_bytes() != server_before
    for pem, purpose, name in (
        (server_before, ExtendedKeyUsageOID.SERVER_AUTH, pki.HUB_TLS_NAME),
        (keys.server_cert.read_bytes(), ExtendedKeyUsageOID.SERVER_AUTH, pki.HUB_TLS_NAME),
        (bundle["certificate"], ExtendedKeyUsageOID.CLIENT_AUTH, "till-1"),
    ):
        cert = certificate(pem)
        ext = cert.extensions
        assert len(ext) == 4, ext
        assert ext.get_extension_for_class(x509.BasicConstraints).critical
        eku = ext.get_extension_for_class(x509.ExtendedKeyUsage)
        assert not eku.critical and list(eku.value) == [purpose]
        san = ext.get_extension_for_class(x509.SubjectAlternativeName)
        assert not san.critical
        aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier)
        assert not aki.critical and aki.value.key_identifier == ski.value.digest
        assert cert.issuer == ca.subject
        assert pki.device_id_of(pem if isinstance(pem, bytes) else pem.encode()) == name


def test_secrets_are_written_0600_and_the_rest_0644(tmp_path: Path, cli: CLI) -> None:
    """Every key file as `hub init`, `hub init --renew-server`, `hub enroll` and `sync
    install` write it: a private key (the CA's, the server's, the snapshot key, a till's,
    and the bundle that carries one) 0600, which the hub and the till check before they
    use one; the certificates and the snapshot's public key 0644, readable by a checker
    running as another user (docs/HUB.md's health check reads `ca.pem`)."""
    hub_dir = tmp_path / "hub"
    keys = made_hub(cli, hub_dir)
    secrets = {"ca.key", "server.key", "snapshot.key"}
    for path in keys.root.iterdir():
        assert mode(path) == (0o600 if path.name in secrets else 0o644), path
    assert {p.name for p in keys.root.iterdir()} == secrets | {
        "ca.pem",
        "server.pem",
        "snapshot.pub",
    }
    assert cli("hub", "init", "--hub-dir", hub_dir, "--renew-server").code == 0
    assert (mode(keys.server_key), mode(keys.server_cert)) == (0o600, 0o644)
    out = tmp_path / "till-1.json"
    enrolled(cli, hub_dir, out)
    assert mode(out) == 0o600
    installed = cli("sync", "install", out)
    assert installed.code == 0, installed.err
    root = tmp_path / "data" / "enrollment"
    files = {p.name: mode(p) for p in root.iterdir()}
    assert files == {
        "ca.pem": 0o644,
        "device.pem": 0o644,
        "device.key": 0o600,
        "snapshot.pub": 0o644,
        "enrollment.json": 0o644,
    }


# ---------------------------------------------------------------- the SQLite hub store


def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
    """(journal mode, synchronous, busy timeout) of a connection."""
    return (
        conn.execute("PRAGMA journal_mode").fetchone()[0],
        conn.execute("PRAGMA synchronous").fetchone()[0],
        conn.execute("PRAGMA busy_timeout").fetchone()[0],
    )


def in_a_thread(store: SqliteHubStore) -> tuple[str, int, int]:
    """The pragmas of the connection another thread of the hub opens (a gRPC worker's)."""
    seen: list[tuple[str, int, int]] = []
    worker = threading.Thread(target=lambda: seen.append(pragmas(store._conn())))
    worker.start()
    worker.join(LONG_S)
    return seen[0]


def test_every_connection_of_the_sqlite_hub_store_is_wal_full_and_waits_30_s(
    tmp_path: Path,
) -> None:
    """A receipt the hub acknowledged is on the disk (synchronous = FULL: 2; NORMAL, 1,
    loses the last commits of a WAL file at a power cut, and the till, told "stored",
    never sends them again); readers do not block the writer (WAL); a writer waits 30 s
    for another (busy_timeout) rather than answering a till "database is locked". Each
    thread has its own connection, set up the same way, and so does the store opened
    again on the file."""
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        assert BUSY_TIMEOUT_MS == 30_000
        assert pragmas(store._conn()) == ("wal", 2, 30_000)
        assert in_a_thread(store) == ("wal", 2, 30_000)
        assert store.durability_notes() == []
    finally:
        store.close()
    again = SqliteHubStore(tmp_path / "hub.db")
    try:
        assert pragmas(again._conn()) == ("wal", 2, 30_000)
    finally:
        again.close()


def test_a_hub_write_waits_for_another_writer_of_its_file_rather_than_failing(
    tmp_path: Path,
) -> None:
    """Another process writing the hub's file (`hub import`, `hub publish` beside `hub
    serve`) holds its write lock: the store's write waits for it and then succeeds,
    never "database is locked" at once. Whether the write is still waiting after a
    second is looked at only while the lock is held, so a slow machine cannot fail it."""
    path = tmp_path / "hub.db"
    store = SqliteHubStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    outcome: list[object] = []

    def publish() -> None:
        try:
            outcome.append(store.publish(datetime.now(UTC), 60.0))
        except Exception as exc:  # the verdict is read below
            outcome.append(exc)

    try:
        other.execute("BEGIN IMMEDIATE")
        worker = threading.Thread(target=publish)
        worker.start()
        worker.join(1.0)
        assert outcome == [], outcome  # still waiting (a refusal would be here by now)
        other.execute("COMMIT")
        worker.join(LONG_S)
        assert len(outcome) == 1 and getattr(outcome[0], "version", None) == 1, outcome
    finally:
        other.close()
        store.close()
