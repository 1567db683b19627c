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

import contextlib
import json
import socket
import sqlite3
import stat
import threading
import time
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from tillpoint.agent.errors import ForeignDatabase
from tillpoint.sync import client, hub_server, pki
from tillpoint.sync.client import HubLink
from tillpoint.sync.hub_sqlite import BUSY_TIMEOUT_MS, MAX_PROBLEMS, SqliteHubStore
from tillpoint.sync.hub_store import ImportRefused, ImportReport, ImportRow, RowProblem
from tillpoint.sync.loopback import LoopbackHub
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, ChannelStates
from .test_review24_hub24 import Proxy

LONG_S = 60.0  # a wait on a loaded machine's thread: generous, never the verdict
CONNECT_S = 30.0  # a loaded machine's handshake


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


def test_a_hubs_names_are_in_its_certificate_once_each(tmp_path: Path, cli: CLI) -> None:
    """`--host` given twice, or naming what the certificate names already (`localhost`),
    adds each name once, at `hub init` and at each renewal (`_san`'s check, its `or` made
    `and`, let every repeat through and survived); an empty `--host` is refused in one
    line, exit 2."""
    hub_dir = tmp_path / "hub"
    empty = cli("hub", "init", "--hub-dir", hub_dir, "--host", "")
    assert empty.code == 2 and empty.err.count("\n") == 1, empty.err
    hosts = ["--host", "hub.example", "--host", "hub.example", "--host", "localhost"]
    keys = made_hub(cli, hub_dir, *hosts)
    for _ in range(2):
        san = certificate(keys.server_cert.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        dns = san.value.get_values_for_type(x509.DNSName)
        assert len(dns) == len(set(dns)), dns
        assert {"tillpoint-hub", "localhost", "hub.example"} <= set(dns)
        renewed = cli("hub", "init", "--hub-dir", hub_dir, "--renew-server", *hosts)
        assert renewed.code == 0, renewed.err


# ---------------------------------------------------------------- the channel (client.py)


def reply_of(size: int) -> pb.ListTransactionsReply:
    """A ListTransactionsReply whose encoded size is exactly `size` bytes."""
    card = size
    while True:
        reply = pb.ListTransactionsReply(transactions=[pb.StoredTransaction(card="x" * card)])
        if reply.ByteSize() == size:
            return reply
        card -= reply.ByteSize() - size


class OneAnswer(pb_grpc.HubServicer):  # type: ignore[misc]
    """A hub's stand-in that answers ListTransactions with a reply of a given size (the
    reference hub sends no message above its 1 MiB chunks: the size is the test's)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def ListTransactions(
        self, request: pb.ListTransactionsRequest, context: grpc.ServicerContext
    ) -> pb.ListTransactionsReply:
        return reply_of(self.size)


def test_the_till_takes_a_hub_message_of_4_mib_and_refuses_one_byte_more(
    tmp_path: Path,
) -> None:
    """The link reads a message of the hub up to 4 MiB (4,194,304 bytes, as encoded), as
    its channel's `grpc.max_receive_message_length` says; one byte more is
    RESOURCE_EXHAUSTED, which the till counts as the hub being away. Served over mTLS
    with the hub's own keys, read through the till's own link."""
    hub = LoopbackHub(tmp_path / "hub", start=False)
    enrollment = hub.enroll("till-1", tmp_path / "till")
    key, cert, ca = hub.dir.keys.server_credentials_material()
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    servicer = OneAnswer(4 * 1024 * 1024)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_HubServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    link = HubLink(f"127.0.0.1:{port}", enrollment)
    try:
        ask = pb.ListTransactionsRequest(device_id="till-1")
        taken = link.stub.ListTransactions(ask, timeout=CONNECT_S)
        assert taken.ByteSize() == 4_194_304
        servicer.size += 1
        with pytest.raises(grpc.RpcError) as refused:
            link.stub.ListTransactions(ask, timeout=CONNECT_S)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        assert "4194305" in (refused.value.details() or ""), refused.value.details()
    finally:
        link.close()
        server.stop(0).wait()


class SilentProxy(Proxy):
    """Review 24's TCP forwarder to the hub; `silence()`: from then on it passes nothing
    either way and keeps the connections open (a link whose packets are dropped: a cable
    pulled between switches, a NAT that forgot the connection), so no end of the
    connection is ever seen."""

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.frozen:
                    dst.sendall(data)

    def silence(self) -> None:
        self.freeze()


def test_a_quiet_link_whose_hub_went_silent_is_noticed_by_its_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A till with no call under way still pings its hub (keepalive without calls, with
    no bound on pings without data between), and a ping the hub does not answer within
    the keepalive timeout ends the connection: a link gone silent after it had been quiet
    a while leaves READY, and the channel connects again, rather than every call on the
    dead connection waiting out its deadline. Shipped: a ping each 20 s, a minute for its
    answer (10 s from review 57 to session 58, which cut slow lines' transfers); here 1 s
    and 3 s (the hub's accepted interval scaled with them), and the verdict has 30 s.
    Fails before review 57's fix: grpcio 1.85 times that ping by gRPC's own ping timeout,
    not `grpc.keepalive_timeout_ms`, and the till set only the latter. With pings only
    while a call is under way, or only the first ping of a quiet link, it was never
    noticed."""
    monkeypatch.setattr(client, "KEEPALIVE_MS", 1_000)
    monkeypatch.setattr(client, "KEEPALIVE_TIMEOUT_MS", 3_000, raising=False)
    monkeypatch.setattr(hub_server, "MIN_PING_INTERVAL_MS", 500)
    hub = LoopbackHub(tmp_path / "hub")
    proxy = SilentProxy(hub.port)
    link = HubLink(f"127.0.0.1:{proxy.port}", hub.enroll("till-1", tmp_path / "till"))
    states = ChannelStates(link.channel)
    try:
        assert states.wait_ready(CONNECT_S), states.states
        time.sleep(3.5)  # pings answered, nothing else on the link
        assert states.since_ready() == [grpc.ChannelConnectivity.READY], states.states
        proxy.silence()
        deadline = time.monotonic() + 30.0
        while len(states.since_ready()) == 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(states.since_ready()) > 1, states.states
    finally:
        states.close()
        link.close()
        proxy.close()
        hub.stop()


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


def test_a_close_says_how_many_live_threads_connections_it_left_and_only_then(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`close` closes its own thread's connection and those of threads that ended, and
    leaves a live thread's to it (closed under its statement: a segmentation fault,
    review 42), saying so at INFO, for the support engineer reading a stop's log; a
    close that left none says nothing (the `if` negated said "0 connection(s)" at every
    stop and nothing when it did leave one)."""
    store = SqliteHubStore(tmp_path / "hub.db")
    asked, done = threading.Event(), threading.Event()

    def hold_one() -> None:
        store._conn()
        asked.set()
        done.wait(LONG_S)

    worker = threading.Thread(target=hold_one)
    worker.start()
    try:
        assert asked.wait(LONG_S)
        with caplog.at_level("INFO", logger="tillpoint.hub"):
            store.close()
        said = [r.getMessage() for r in caplog.records if r.name == "tillpoint.hub"]
        assert said == ["hub database: 1 connection(s) of threads still running left to them"], said
    finally:
        done.set()
        worker.join(LONG_S)
    caplog.clear()
    with caplog.at_level("INFO", logger="tillpoint.hub"):
        store._conn()
        store.close()
    assert [r for r in caplog.records if r.name == "tillpoint.hub"] == []


def test_a_hub_read_is_served_while_another_writer_holds_the_files_write_lock(
    tmp_path: Path,
) -> None:
    """A till's pull or a snapshot build reads beside a writer (WAL, a deferred `BEGIN`):
    while another connection holds the write lock, the store's read is answered at once
    with what was committed, never made to wait for the lock (a read begun as a write
    waited the writer's whole transaction, then "database is locked" after 30 s)."""
    path = tmp_path / "hub.db"
    store = SqliteHubStore(path)
    store.publish(datetime.now(UTC), 60.0)
    other = sqlite3.connect(path, isolation_level=None)
    seen: list[object] = []

    def read() -> None:
        try:
            latest = store.latest()
            seen.append(latest.version if latest else None)
        except Exception as exc:  # the verdict is read below
            seen.append(exc)

    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM publications")  # not committed: the reader sees 1
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(LONG_S)
        assert seen == [1], seen
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()


def test_a_thread_that_closes_the_store_and_uses_it_again_keeps_none_of_its_old_connections(
    tmp_path: Path,
) -> None:
    """A thread that closes the store and reads it again, three times over (`HubServer`'s
    stop and start from one thread), holds its newest connection only: the ones `close`
    closed are let go of at its next read, not kept aside as if still inside a read
    (`_reading` of a closed connection made True kept one more each time, for the
    thread's life)."""
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        for _ in range(3):
            assert store.latest() is None
            store.close()
        assert store.latest() is None
        assert getattr(store._local, "stale", []) == []
    finally:
        store.close()


def customer(key: str, where: str) -> ImportRow:
    return ImportRow("customer", key, {"id": key, "name": key}, where)


def test_an_import_tells_its_first_ten_problems_and_counts_the_rest(tmp_path: Path) -> None:
    """`hub import` of a file with twelve bad rows names the first ten, in the file's
    order, and says "(and 2 more)"; a row after the first problem is still checked (a
    key given twice is one more problem) but nothing is written: the draft stays empty."""
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        rows: list[ImportRow | RowProblem] = [customer("c-0", "line 1")]
        rows += [RowProblem(f"line {n}", "not JSON") for n in range(2, 12)]
        rows += [customer("c-0", "line 12"), customer("c-5", "line 13")]
        rows += [RowProblem("line 14", "not JSON")]
        with pytest.raises(ImportRefused) as refused:
            store.import_rows(iter(rows))
        assert MAX_PROBLEMS == 10
        assert refused.value.problems == [f"line {n}: not JSON" for n in range(2, 12)]
        assert refused.value.message.endswith("line 11: not JSON (and 2 more)")
        assert store.draft_size() == 0
        with pytest.raises(ImportRefused) as twice:
            store.import_rows(iter([customer("c-1", "line 1"), customer("c-1", "line 2")]))
        assert twice.value.problems == ["line 2: customer 'c-1' appears twice (also at line 1)"]
        assert twice.value.message.endswith("(also at line 1)"), twice.value.message
        assert store.draft_size() == 0
    finally:
        store.close()


def test_an_import_reports_its_rows_by_kind_and_its_removals(tmp_path: Path) -> None:
    """What `hub import` says it took: every row, the rows by kind, and the removals (a
    row with no document) apart; each row is in the draft."""
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        rows: list[ImportRow | RowProblem] = [
            customer("c-1", "line 1"),
            customer("c-2", "line 2"),
            ImportRow("customer", "c-3", None, "line 3"),
            customer("c-4", "line 4"),
        ]
        report = store.import_rows(iter(rows))
        assert report == ImportReport(rows=4, by_kind={"customer": 3}, removed=1)
        assert store.draft_size() == 4
        given = ImportRow("customer", "c-5", None, "line 1", text='{"id":"c-5","name":"x"}')
        assert store.import_rows(iter([given])).removed == 0
        with sqlite3.connect(tmp_path / "hub.db") as conn:
            docs = dict(conn.execute("SELECT key, doc FROM draft WHERE kind = 'customer'"))
        assert docs == {
            "c-1": '{"id":"c-1","name":"c-1"}',
            "c-2": '{"id":"c-2","name":"c-2"}',
            "c-3": None,
            "c-4": '{"id":"c-4","name":"c-4"}',
            "c-5": '{"id":"c-5","name":"x"}',
        }
    finally:
        store.close()


def test_an_import_of_cards_of_unknown_customers_names_ten_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    """Eleven cards whose customer is neither in the import nor published: the first
    ten named, "(and 1 more)", nothing written; a card whose customer comes in the same
    import is taken."""
    store = SqliteHubStore(tmp_path / "hub.db")
    try:
        cards: list[ImportRow | RowProblem] = [
            ImportRow(
                "card", f"card-{n:02}", {"id": f"card-{n:02}", "customerId": "nobody"}, f"line {n}"
            )
            for n in range(1, 12)
        ]
        with pytest.raises(ImportRefused) as refused:
            store.import_rows(iter(cards))
        assert len(refused.value.problems) == 10
        assert refused.value.problems[0] == (
            "line 1: card card-01 belongs to customer 'nobody', who is not known"
        )
        assert refused.value.message.endswith("(and 1 more)"), refused.value.message
        assert store.draft_size() == 0
        known = [customer("nobody", "line 1"), cards[0]]
        assert store.import_rows(iter(known)).rows == 2
    finally:
        store.close()


def test_a_hub_store_in_a_new_directory_is_made_and_another_programs_file_refused(
    tmp_path: Path,
) -> None:
    """`--store` naming a file two directories down that do not exist yet: they are
    made. Another program's SQLite file, still open with its last writes in its `-wal`
    or closed, is refused in the hub's words (a hub database, and where a hub's store
    is named), left as it was."""
    deep = SqliteHubStore(tmp_path / "a" / "b" / "hub.db")
    deep.close()
    theirs = tmp_path / "other.db"
    other = sqlite3.connect(theirs, isolation_level=None)
    try:
        other.execute("PRAGMA journal_mode = WAL")
        other.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        other.execute("INSERT INTO orders VALUES (1)")
        assert theirs.with_name("other.db-wal").stat().st_size > 0
        with pytest.raises(ForeignDatabase) as refused:
            SqliteHubStore(theirs)
        assert "not a tillpoint hub database" in refused.value.message, refused.value.message
        assert other.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    finally:
        other.close()
    with pytest.raises(ForeignDatabase) as checkpointed:  # its -wal gone with its close
        SqliteHubStore(theirs)
    assert "not a tillpoint hub database" in checkpointed.value.message
