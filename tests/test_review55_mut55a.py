"""Review 55 (mut55a): the till's trust in its hub (the contract §9; docs/PROTOCOL.md §1).

Mutation testing of `sync/pki.py` and `sync/client.py` left these rules held by no test:
the name the till checks whatever address it dials, the certificates' dates and their
edges, the CA's path length, the bundle's shape, and the online state of the link. Real
parts: the hub's keys made by `hub init`, bundles by `hub enroll`, installed by `sync
install` (in-process CLI), the reference hub over mTLS on loopback, forged certificates
made with the `cryptography` package."""

from __future__ import annotations

import json
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
