"""The hub serves only enrolled devices over mTLS, each only as itself (the contract §9)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from tillpoint.agent.errors import HubUnavailable
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync import pki
from tillpoint.sync.authoriser import HubAuthoriser
from tillpoint.sync.client import HubLink
from tillpoint.sync.hub_server import HubDir
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

TIMEOUT = 5.0


def stub(
    hub: LoopbackHub,
    *,
    ca: bytes | None = None,
    key: bytes | None = None,
    cert: bytes | None = None,
) -> pb_grpc.HubStub:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca or hub.dir.keys.ca_cert.read_bytes(),
        private_key=key,
        certificate_chain=cert,
    )
    channel = grpc.secure_channel(
        hub.address, creds, options=[("grpc.ssl_target_name_override", pki.HUB_TLS_NAME)]
    )
    return pb_grpc.HubStub(channel)


def identity(hub: LoopbackHub, device: str, *, enroll: bool) -> pki.DeviceIdentity:
    made = pki.issue_device(hub.dir.keys, device)
    if enroll:
        hub.store.enroll(device, made.fingerprint, datetime.now(UTC))
    return made


def pull(s: pb_grpc.HubStub, device: str) -> list[pb.SnapshotChunk]:
    return list(s.PullSnapshot(pb.PullSnapshotRequest(device_id=device), timeout=TIMEOUT))


def code_of(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.Call)
    return call.code()


def test_an_enrolled_device_is_served(hub: LoopbackHub) -> None:
    me = identity(hub, "till-1", enroll=True)
    chunks = pull(stub(hub, key=me.key_pem, cert=me.cert_pem), "till-1")
    assert chunks[0].version == 1


def test_no_client_certificate_is_refused_at_the_handshake(hub: LoopbackHub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pull(stub(hub), "till-1")
    assert code_of(err.value) == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_of_the_hubs_ca_but_not_enrolled_is_refused(hub: LoopbackHub) -> None:
    stranger = identity(hub, "till-9", enroll=False)
    with pytest.raises(grpc.RpcError) as err:
        pull(stub(hub, key=stranger.key_pem, cert=stranger.cert_pem), "till-9")
    assert code_of(err.value) == grpc.StatusCode.PERMISSION_DENIED
    assert "not enrolled" in (err.value.details() or "")  # type: ignore[attr-defined]


def test_another_devices_certificate_is_refused(hub: LoopbackHub) -> None:
    identity(hub, "till-1", enroll=True)
    other = identity(hub, "till-2", enroll=True)
    s = stub(hub, key=other.key_pem, cert=other.cert_pem)
    for call in (
        lambda: pull(s, "till-1"),
        lambda: s.AuthorizeRedemption(
            pb.AuthorizeRedemptionRequest(
                device_id="till-1",
                receipt_id="r",
                customer_id="c-1",
                points=10,
                at=datetime.now(UTC).isoformat(),
            ),
            timeout=TIMEOUT,
        ),
        lambda: s.PushTransactions(pb.TransactionBatch(device_id="till-1"), timeout=TIMEOUT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert code_of(err.value) == grpc.StatusCode.PERMISSION_DENIED
    # ... and so is a batch that smuggles another device's transaction
    smuggled = pb.TransactionBatch(
        device_id="till-2",
        transactions=[pb.Transaction(device_id="till-1", seq=1, kind=pb.CHECKOUT)],
    )
    with pytest.raises(grpc.RpcError) as err:
        s.PushTransactions(smuggled, timeout=TIMEOUT)
    assert code_of(err.value) == grpc.StatusCode.PERMISSION_DENIED
    assert hub.store.ledger() == []


def test_a_certificate_from_another_ca_is_refused(hub: LoopbackHub, tmp_path: Path) -> None:
    elsewhere = HubDir(tmp_path / "other-hub")
    elsewhere.init()
    forged = pki.issue_device(elsewhere.keys, "till-1")  # same name, wrong CA
    identity(hub, "till-1", enroll=True)
    with pytest.raises(grpc.RpcError) as err:
        pull(stub(hub, key=forged.key_pem, cert=forged.cert_pem), "till-1")
    assert code_of(err.value) == grpc.StatusCode.UNAVAILABLE


def test_an_impostor_hub_is_refused_by_the_till(hub: LoopbackHub, tmp_path: Path) -> None:
    till_dir = tmp_path / "till"
    enrollment = hub.enroll("till-1", till_dir)
    impostor = LoopbackHub(tmp_path / "impostor", data=sample_master_data())
    try:
        # the till's files still say "trust the real hub's CA"; it dials the impostor
        link = HubLink(impostor.address, enrollment)
        with pytest.raises(grpc.RpcError) as err:
            list(
                link.stub.PullSnapshot(pb.PullSnapshotRequest(device_id="till-1"), timeout=TIMEOUT)
            )
        assert code_of(err.value) == grpc.StatusCode.UNAVAILABLE
        authoriser = HubAuthoriser(link, till_dir, "till-1", 0.3)
        with pytest.raises(HubUnavailable):
            authoriser.authorise("c-1", "r-1", 10, datetime.now(UTC))
        authoriser.close()
        link.close()
    finally:
        impostor.stop()


def test_revoked_and_superseded_certificates_are_refused(hub: LoopbackHub) -> None:
    old = identity(hub, "till-1", enroll=True)
    new = identity(hub, "till-1", enroll=True)  # re-enrolled: only the new one counts
    with pytest.raises(grpc.RpcError) as err:
        pull(stub(hub, key=old.key_pem, cert=old.cert_pem), "till-1")
    assert code_of(err.value) == grpc.StatusCode.PERMISSION_DENIED
    assert pull(stub(hub, key=new.key_pem, cert=new.cert_pem), "till-1")
    assert hub.store.revoke("till-1", datetime.now(UTC))
    with pytest.raises(grpc.RpcError) as err:
        pull(stub(hub, key=new.key_pem, cert=new.cert_pem), "till-1")
    assert code_of(err.value) == grpc.StatusCode.PERMISSION_DENIED


def test_a_refused_till_still_sells_offline(hub: LoopbackHub, tmp_path: Path) -> None:
    till = hub.till("till-1", tmp_path / "till", start=False)
    try:
        from tillpoint.sync.pull import Puller

        Puller(till.agent, till.link, till.link.enrollment, call_timeout_s=2).pull()
        hub.store.revoke("till-1", datetime.now(UTC))
        result = till.agent.checkout(receipt_from_json(receipt("r-1", "2770000000017", redeem=20)))
        assert result.mode == "OFFLINE" and result.redeemed_points == 20
    finally:
        till.stop()


def test_bundle_install_checks_the_device(hub: LoopbackHub, tmp_path: Path) -> None:
    made = pki.issue_device(hub.dir.keys, "till-1")
    bundle = pki.make_bundle(hub.dir.keys, made, hub.address)
    with pytest.raises(Exception, match="set device_id"):
        pki.install_bundle(tmp_path / "t", bundle, "till-2")
    assert not pki.is_enrolled(tmp_path / "t")
    broken = {**bundle, "privateKey": pki.issue_device(hub.dir.keys, "till-1").key_pem.decode()}
    with pytest.raises(Exception, match="does not match"):
        pki.install_bundle(tmp_path / "t", broken, "till-1")
    pki.install_bundle(tmp_path / "t", json.loads(json.dumps(bundle)), "till-1")
    assert pki.is_enrolled(tmp_path / "t")
    assert (tmp_path / "t" / "enrollment" / "device.key").stat().st_mode & 0o077 == 0


def test_a_revoked_till_s_subscription_ends_at_the_next_heartbeat(tmp_path: Path) -> None:
    """The device was checked when the stream opened only: a revoked till went on getting
    notifications until the stream's end (up to `stream_max_s`, 300 s). Now each
    heartbeat checks it again, as every new call does."""
    from tillpoint.sync.hub_server import HubConfig

    hub = LoopbackHub(tmp_path / "hub", HubConfig(heartbeat_s=0.2), data=sample_master_data())
    try:
        made = identity(hub, "till-1", enroll=True)
        stream = stub(hub, key=made.key_pem, cert=made.cert_pem).Subscribe(
            pb.SubscribeRequest(device_id="till-1"), timeout=TIMEOUT
        )
        assert next(stream).latest_version == 1
        assert next(stream)  # a heartbeat while enrolled
        hub.store.revoke("till-1", datetime.now(UTC))
        with pytest.raises(grpc.RpcError) as err:
            for _ in range(10):
                next(stream)
        assert code_of(err.value) == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in str(err.value.details())
    finally:
        hub.stop()
