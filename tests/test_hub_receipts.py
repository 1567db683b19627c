"""Reconciling a till with its hub: ListTransactions over mTLS and `tillpoint hub receipts`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.cli import main
from tillpoint.agent.results import receipt_from_json, refund_from_json
from tillpoint.sync import hub_server
from tillpoint.sync.loopback import LoopbackHub, receipt, sample_master_data, wait_for
from tillpoint.sync.pull import cache_version
from tillpoint.sync.state import open_ledger
from tillpoint.v1 import tillpoint_pb2 as pb

CARD_ANNA = "2770000000017"
CARD_NEW = "2770000000031"  # valid EAN-13, not known to the hub
TIMEOUT = 5


def _outbox(data_dir: Path) -> int:
    conn = open_ledger(data_dir)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, list[dict[str, object]]]:
    """A hub directory whose ledger holds till-1's seq 1..3 (checkout, checkout, refund)."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till-1")
    try:
        wait_for(lambda: cache_version(till.data_dir) == 1)
        at = datetime.now(UTC) - timedelta(minutes=5)
        results: list[dict[str, object]] = [
            till.agent.checkout(receipt_from_json(receipt("r-1", CARD_ANNA, at=at))),
            till.agent.checkout(
                receipt_from_json(receipt("r-2", CARD_NEW, at=at + timedelta(seconds=1)))
            ),
            till.agent.refund(
                refund_from_json(
                    {
                        "refundId": "rf-1",
                        "receiptId": "r-1",
                        "at": (at + timedelta(seconds=2)).isoformat(),
                        "lines": [{"sku": "4601234000017", "qty": "1"}],
                    }
                )
            ),
        ]
        wait_for(lambda: _outbox(till.data_dir) == 0, timeout=15)

        stub = till.link.stub
        reply = stub.ListTransactions(
            pb.ListTransactionsRequest(device_id="till-1", limit=2), timeout=TIMEOUT
        )
        assert [t.seq for t in reply.transactions] == [1, 2] and reply.more
        assert reply.acked_through_seq == 3
        first = reply.transactions[0]
        assert (first.device_id, first.kind, first.receipt_id, first.refund_id) == (
            "till-1",
            pb.CHECKOUT,
            "r-1",
            "",
        )
        assert first.customer_id == "c-1" and first.card == CARD_ANNA
        assert first.points_delta_available == results[0].earned_points
        assert first.ingested_at
        rest = stub.ListTransactions(
            pb.ListTransactionsRequest(device_id="till-1", since_seq=2), timeout=TIMEOUT
        )
        assert not rest.more and [(t.seq, t.kind) for t in rest.transactions] == [(3, pb.REFUND)]
        refund = rest.transactions[0]
        assert (refund.refund_id, refund.receipt_id) == ("rf-1", "r-1")
        assert refund.points_delta_available == -int(str(results[2].taken_back_points))
        # what the till was told at commit is what the hub stored under
        assert [(r.device_id, r.seq) for r in results] == [
            ("till-1", 1),
            ("till-1", 2),
            ("till-1", 3),
        ]

        for request, code in (
            (pb.ListTransactionsRequest(device_id="till-2"), grpc.StatusCode.PERMISSION_DENIED),
            (
                pb.ListTransactionsRequest(device_id="till-1", since_seq=-1),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListTransactions(request, timeout=TIMEOUT)
            assert caught.value.code() == code

        # the till's operator asks the same from the till (page by page, 2 a page here)
        monkeypatch.setattr(hub_server, "MAX_LIST", 2)
        monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
        capsys.readouterr()
        code = main(["sync", "receipts", "--data-dir", str(till.data_dir), "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        asked = json_format.ParseDict(json.loads(out), pb.ListTransactionsReply())
        assert asked == pb.ListTransactionsReply(
            transactions=[*reply.transactions, *rest.transactions], acked_through_seq=3
        )
        code = main(["sync", "receipts", "--data-dir", str(till.data_dir), "--since", "2"])
        out, _ = capsys.readouterr()
        assert code == 0 and out.startswith("seq 3: REFUND rf-1 of r-1 at ")
        assert out.splitlines()[-1] == "1 transaction(s) of till-1 stored; all stored through seq 3"
    finally:
        till.stop()
        hub.stop()
    code = main(["sync", "receipts", "--data-dir", str(till.data_dir)])
    out, err = capsys.readouterr()  # the hub is gone: one line, no traceback
    assert code == 1 and out == "" and err.startswith("tillpoint: the hub is unreachable")
    assert err.count("\n") == 1
    return tmp_path / "hub", results


def test_list_transactions_and_hub_receipts(
    synced: tuple[Path, list[dict[str, object]]], capsys: pytest.CaptureFixture[str]
) -> None:
    hub_dir, _ = synced
    # the operator's offline tool reads the same ledger, with the hub stopped
    code = main(["hub", "receipts", "--device", "till-1", "--hub-dir", str(hub_dir), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["transactions"][0]["seq"] == 1  # the CLI's proto3 JSON: int64 as a number
    assert doc["transactions"][0]["kind"] == "CHECKOUT"
    assert doc["ackedThroughSeq"] == 3
    reply = json_format.ParseDict(doc, pb.ListTransactionsReply())
    assert [t.seq for t in reply.transactions] == [1, 2, 3]
    assert reply.transactions[1].customer_id == "" and reply.transactions[1].card == CARD_NEW

    code = main(
        ["hub", "receipts", "--device", "till-1", "--hub-dir", str(hub_dir), "--since", "1"]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.splitlines()[0].startswith("seq 2: CHECKOUT r-2 at ")
    assert out.splitlines()[1].startswith("seq 3: REFUND rf-1 of r-1 at ")
    assert out.splitlines()[-1] == "2 transaction(s) of till-1 stored; all stored through seq 3"

    code = main(
        ["hub", "receipts", "--device", "till-1", "--receipt", "r-1", "--hub-dir", str(hub_dir)]
    )
    out, _ = capsys.readouterr()
    assert code == 0 and [line.split(":")[0] for line in out.splitlines()[:-1]] == [
        "seq 1",
        "seq 3",
    ]

    code = main(
        [
            "hub",
            "receipts",
            "--device",
            "till-1",
            "--since",
            "3",
            "--hub-dir",
            str(hub_dir),
            "--json",
        ]
    )
    out, _ = capsys.readouterr()  # nothing above seq 3: every field still there
    assert code == 0
    assert json.loads(out) == {"transactions": [], "ackedThroughSeq": 3, "more": False}

    code = main(["hub", "receipts", "--device", "till-9", "--hub-dir", str(hub_dir)])
    out, err = capsys.readouterr()
    assert (
        code == 2 and out == "" and err == "tillpoint: device till-9 is not enrolled at this hub\n"
    )
    code = main(
        ["hub", "receipts", "--device", "till-1", "--since", "-1", "--hub-dir", str(hub_dir)]
    )
    assert code == 2 and capsys.readouterr().err.count("\n") == 1


def test_the_hub_refuses_a_request_that_does_not_decode(tmp_path: Path) -> None:
    """A till's bytes that are no request (unary or streamed answer alike) are the
    caller's error at the hub too: INVALID_ARGUMENT, readable, and the hub serves on."""
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    till = hub.till("till-1", tmp_path / "till-1")
    try:
        wait_for(lambda: cache_version(till.data_dir) == 1)
        channel = till.link.channel
        for method in ("/tillpoint.v1.Hub/ListTransactions", "/tillpoint.v1.Hub/PushTransactions"):
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(method)(b"\x0a\xff", timeout=TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "not a valid message" in (caught.value.details() or "")
        with pytest.raises(grpc.RpcError) as caught:
            list(
                channel.unary_stream("/tillpoint.v1.Hub/PullSnapshot")(b"\x0a\xff", timeout=TIMEOUT)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = till.link.stub.ListTransactions(
            pb.ListTransactionsRequest(device_id="till-1"), timeout=TIMEOUT
        )
        assert not reply.more
    finally:
        till.stop()
        hub.stop()
