"""Session 20: the hub and sync audit's findings, each a test that failed before its fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.errors import InputError
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.models import coupon_code
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_store import TxIn, Unsynced
from tillpoint.sync.loopback import LoopbackHub, import_doc, sample_master_data, wait_for
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import CLI, grpc_served, receipt, snapshot
from .test_coupons import outbox
from .test_http_api import Client, error_of

TIMEOUT = 10
WEEK = 7 * 86400.0

# ---------------------------------------------------------------- NUL characters at the till


def test_a_coupon_codes_normal_form_drops_control_characters() -> None:
    """A scanner's GS separator or a NUL inside a code was kept: the code (REJECTED)
    went into the sale's result_json as \\u0000, which PostgreSQL's jsonb refuses."""
    assert coupon_code("AB\u0000C") == "ABC"
    assert coupon_code("sorry\x1d7k2q9\r\n") == "SORRY7K2Q9"
    assert coupon_code("A\u2028B\u202eC\x7f") == "ABC"


def test_a_sale_with_a_nul_in_a_coupon_code_stores_no_control_character(
    agent: Agent, tmp_path: Path
) -> None:
    done = agent.checkout(receipt_from_json(receipt("nul-1", coupons=["AB\u0000C"])))
    assert [v.code for v in done.coupons] == ["ABC"]
    (pushed,) = outbox(tmp_path / "data")
    assert json.loads(pushed.result_json)["coupons"][0]["code"] == "ABC"
    # (request_json keeps the POS's own text, escaped: the hub never reads it as jsonb)
    assert "\\u0000" not in pushed.result_json and "\x00" not in pushed.result_json


def test_confirm_refuses_a_fiscal_document_with_control_characters(agent: Agent) -> None:
    """A NUL in fiscalDocument was stored and pushed; PostgreSQL refused the batch for good
    and the till's outbox was blocked."""
    agent.hold(receipt_from_json(receipt("h-1")))
    for bad in ("FD\u00001", "FD\n1", "FD\x1d1"):
        with pytest.raises(InputError, match="confirm: fiscalDocument must not contain control"):
            agent.confirm("h-1", bad)
    assert agent.confirm("h-1", "FD 1").state == "CONFIRMED"


def test_confirm_with_a_nul_fiscal_document_is_refused_on_every_interface(
    agent: Agent, cli: CLI
) -> None:
    agent.hold(receipt_from_json(receipt("h-2")))
    with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.PosAgentStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Confirm(
                pb.ConfirmRequest(receipt_id="h-2", fiscal_document="FD\u00001"), timeout=TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "control characters" in (err.value.details() or "")
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    pos = Client(server.port)
    try:
        status, code, message = error_of(
            pos.post("/v1/confirm", {"receiptId": "h-2", "fiscalDocument": "FD\u00001"})
        )
        assert (status, code) == (400, "INVALID_ARGUMENT") and "control characters" in message
    finally:
        pos.close()
        server.stop()
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("hold", receipt("h-3"), "--json").code == 0
    refused = cli("confirm", "h-3", "--fiscal", "FD\u00011", "--json")
    assert refused.code == 2 and "control characters" in refused.err and refused.out == ""


# ---------------------------------------------------------------- NUL characters at the hub

HUB_NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _sale(seq: int, result: str, fiscal: str = "", available: int = 0) -> TxIn:
    request = json.dumps({"receiptId": f"a-{seq}"})
    return TxIn(
        "a", seq, "CHECKOUT", HUB_NOW.isoformat(), "c-1", "", request, result, available, 0,
        "", fiscal,
    )  # fmt: skip


def test_the_hub_stores_what_older_tills_sent_with_nul_characters(
    hub_store_factory: Any,
) -> None:
    """A fiscal document with a NUL failed the whole batch on PostgreSQL (and every push
    after it); a result with the escape \\u0000 (a coupon code) was stored, and then every
    `::jsonb` read of the results failed: no snapshot of the chain, no balance. Now the
    first is REJECTED alone and the second is read."""
    store = hub_store_factory()
    import_doc(store, sample_master_data())
    store.publish(HUB_NOW, WEEK)
    before = store.balance("c-1", HUB_NOW).available
    coupon = '{"coupons":[{"code":"AB\\u0000C","status":"REJECTED"}],"earnedPoints":7}'
    odd = '{"note":"\\\\u0000","earnedPoints":3}'  # an escaped backslash, then letters
    batch = [
        _sale(1, coupon, available=7),
        _sale(2, '{"earnedPoints":1}', fiscal="FD\x001", available=1),
        _sale(3, odd, available=3),
    ]
    done = store.ingest("a", "b1", batch, HUB_NOW)
    assert done.acked_through == 3
    assert [r.outcome for r in done.results] == ["STORED", "REJECTED", "STORED"]
    assert "fiscalDocument" in done.results[1].reason
    assert [e["seq"] for e in store.set_aside_transactions("a")] == [2]
    assert store.balance("c-1", HUB_NOW).available == before + 10
    later = store.publish(HUB_NOW + timedelta(minutes=1), WEEK)  # reads every result
    assert later.version > 0
    held = store.authorise("a", "a-9", "c-1", 5, HUB_NOW, [], HUB_NOW, 600.0)
    assert held.authorised == 5


# ---------------------------------------------------------------- a late AuthorizeRedemption


@pytest.mark.parametrize("path", ["claim", "locked"])
def test_a_late_authorisation_for_a_stored_receipt_holds_nothing(
    hub_store_factory: Any, path: str
) -> None:
    """The till's deadline passed, it committed offline and pushed; the slow
    AuthorizeRedemption reached the customer's lock after the ingest and wrote an ACTIVE
    hold for the stored receipt: its points were taken twice until the hold expired."""
    store = hub_store_factory()
    import_doc(store, sample_master_data())
    store.publish(HUB_NOW, WEEK)
    unsynced = [Unsynced(99, "other", 0)] if path == "locked" else []  # the locked path

    def authorise(receipt_id: str, points: int) -> Any:
        return store.authorise("a", receipt_id, "c-1", points, HUB_NOW, unsynced, HUB_NOW, 600.0)

    # One receipt held, then committed (its hold SETTLED); another committed offline.
    assert authorise("a-1", 10).authorised == 10
    sales = [_sale(1, "{}", available=-10), _sale(2, "{}", available=-5)]
    assert store.ingest("a", "b1", sales, HUB_NOW).count("STORED") == 2
    live = authorise("probe", 0).live_balance
    for receipt_id in ("a-1", "a-2"):  # the late calls
        late = authorise(receipt_id, 10)
        assert (late.authorised, late.hold_id, late.live_balance) == (0, "", live)
    assert authorise("probe", 0).live_balance == live  # no hold taken twice
    assert store.balance("c-1", HUB_NOW).held == 0


# ---------------------------------------------------------------- a lost database


def test_a_lost_database_is_unavailable_not_unknown(
    tmp_path: Path, pg_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device's record was read outside the RPCs' `except StorageError`: with the
    database gone a till got UNKNOWN (as if the hub had answered) instead of UNAVAILABLE."""
    import psycopg
    from tillpoint.sync import hub_postgres

    from .test_hub_security import identity, stub

    monkeypatch.setattr(hub_postgres, "POOL_TIMEOUT_S", 2.0)
    url = pg_cluster.new_database()
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), store=url)
    try:
        me = identity(hub, "till-1", enroll=True)
        s = stub(hub, key=me.key_pem, cert=me.cert_pem)
        ask = pb.AuthorizeRedemptionRequest(
            device_id="till-1", receipt_id="r1", customer_id="c-1", points=0,
            at=HUB_NOW.isoformat(),
        )  # fmt: skip
        assert s.AuthorizeRedemption(ask, timeout=TIMEOUT).live_balance >= 0
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with psycopg.connect(pg_cluster.url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        with pytest.raises(grpc.RpcError) as err:
            s.AuthorizeRedemption(ask, timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(s.PullSnapshot(pb.PullSnapshotRequest(device_id="till-1"), timeout=TIMEOUT))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        with psycopg.connect(pg_cluster.url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        # the pool checks what it hands out and reconnects: served again, soon

        def served() -> bool:
            try:
                return s.AuthorizeRedemption(ask, timeout=TIMEOUT).live_balance >= 0
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                return False

        wait_for(served, timeout=20)
    finally:
        hub.stop()


def test_the_pool_checks_its_connections_and_gives_up_reconnecting_soon(pg_url: str) -> None:
    from tillpoint.sync.hub_postgres import PostgresHubStore

    store = PostgresHubStore(pg_url, migrate_schema=True)
    try:
        # the store's own check (psycopg_pool's empty statement, plus the caller's
        # lock_timeout: test_review24_hub24); a dropped link is replaced, not handed out
        assert store.pool._check == store._check_connection
        assert store.pool.reconnect_timeout <= 10
    finally:
        store.close()


# ---------------------------------------------------------------- a kind this hub does not know


def test_a_transaction_of_an_unknown_kind_is_rejected_alone(tmp_path: Path) -> None:
    """A kind number this hub has no name for (99: a newer till's) failed the whole
    batch with UNKNOWN, and the till's outbox was stuck behind it."""
    from .test_hub_security import identity, stub

    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data())
    try:
        me = identity(hub, "till-1", enroll=True)
        s = stub(hub, key=me.key_pem, cert=me.cert_pem)

        def tx(seq: int, kind: int) -> pb.Transaction:
            return pb.Transaction(
                device_id="till-1", seq=seq, kind=kind, at=HUB_NOW.isoformat(),
                customer_id="c-1", request_json=json.dumps({"receiptId": f"r-{seq}"}),
                result_json="{}",
            )  # fmt: skip

        batch = pb.TransactionBatch(
            device_id="till-1", batch_id="b1", transactions=[tx(1, 99), tx(2, 0), tx(3, 1)]
        )
        ack = s.PushTransactions(batch, timeout=TIMEOUT)
        assert (ack.acked_through_seq, ack.rejected) == (3, 2)
        outcomes = [(r.seq, r.outcome) for r in ack.results]
        assert outcomes == [(1, pb.TX_REJECTED), (2, pb.TX_REJECTED), (3, pb.TX_STORED)]
        assert "unknown kind '99'" in ack.results[0].reason
        assert [e["seq"] for e in hub.store.set_aside_transactions("till-1")] == [1, 2]
    finally:
        hub.stop()


# ---------------------------------------------------------------- a mistyped store URL


@pytest.mark.parametrize(
    "store",
    [
        "postgressql://hub:s3cret@db.example:5432/hub",
        "postgresql+psycopg://hub:s3cret@db.example/hub",
        "pgsql://hub:s3cret@db.example/hub",
    ],
)
def test_a_store_url_of_another_scheme_is_refused_not_a_sqlite_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: str,
) -> None:
    """A mistyped PostgreSQL URL became a SQLite file under ./postgressql:/hub:s3cret@…:
    the import 'succeeded' (exit 0) into it, the password in a directory name."""
    from tillpoint.agent.cli import main

    monkeypatch.chdir(tmp_path)
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    hub = ["--hub-dir", str(tmp_path / "hub")]
    for argv, env in (
        (["hub", "import", str(catalogue), "--publish", "--store", store, *hub], None),
        (["hub", "import", str(catalogue), *hub], store),
    ):
        if env is not None:
            monkeypatch.setenv("TILLPOINT_HUB_STORE", env)
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 2, err
        assert "neither a postgresql://" in err and len(err.strip().splitlines()) == 1
        assert "s3cret" not in err + out
    assert not any("s3cret" in str(p) for p in tmp_path.rglob("*"))


# ---------------------------------------------------------------- the hub CLI's numbers


@pytest.fixture
def hub_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    from tillpoint.agent.cli import main

    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(sample_master_data()), encoding="utf-8")
    assert main(["hub", "import", str(catalogue), "--publish", "--hub-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    return tmp_path


@pytest.mark.parametrize(
    "argv",
    [
        ["publish", "--ttl-hours", "nan"],
        ["publish", "--ttl-hours", "inf"],
        ["publish", "--ttl-hours", "1e300"],
        ["publish", "--ttl-hours", "0"],
        ["publish", "--min-version", "99999999999"],
        ["publish", "--min-version", "-1"],
        ["serve", "--listen", "127.0.0.1:0", "--workers", "0"],
        ["serve", "--listen", "127.0.0.1:0", "--heartbeat", "0"],
        ["serve", "--listen", "127.0.0.1:0", "--publish-every", "-1"],
        ["serve", "--listen", "127.0.0.1:0", "--hold-ttl", "nan"],
        ["serve", "--listen", "127.0.0.1:0", "--ttl-hours", "nan"],
        ["serve", "--listen", "127.0.0.1:0", "--rate-kib", "inf"],
    ],
)
def test_the_hubs_numeric_options_are_range_checked(
    hub_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """NaN, inf or huge values were 'internal error' (exit 1) or taken as they were (a
    server with a heartbeat of 0, a NaN hold time); 99999999999 failed on PostgreSQL."""
    from tillpoint.agent.cli import main

    code = main(["hub", *argv, "--hub-dir", str(hub_dir)])  # serve: refused before it starts
    out, err = capsys.readouterr()
    assert code == 2, err
    assert argv[-2] in err and len(err.strip().splitlines()) == 1 and out == ""
    assert "internal error" not in err


def test_a_hub_config_refuses_what_no_server_can_run_with() -> None:
    from tillpoint.sync.hub_server import HubConfig

    for bad in (
        {"max_workers": 0},
        {"heartbeat_s": 0.0},
        {"hold_ttl_s": float("nan")},
        {"publish_every_s": -1.0},
        {"snapshot_ttl_s": float("inf")},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HubConfig(**bad)  # type: ignore[arg-type]
    assert HubConfig(publish_every_s=0).publish_every_s == 0  # 0: only `hub publish`


def test_an_import_with_a_bad_ttl_stores_nothing(
    hub_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hub import --publish --ttl-hours nan` stored the rows, then exited 2 on the TTL."""
    from tillpoint.agent.cli import main

    data = sample_master_data()
    data["products"] = [
        *data["products"],
        {"sku": "9990000000001", "name": "x", "category": "dairy"},
    ]
    catalogue = tmp_path / "more.json"
    catalogue.write_text(json.dumps(data), encoding="utf-8")
    argv = ["hub", "import", str(catalogue), "--publish", "--ttl-hours", "nan"]
    assert main([*argv, "--hub-dir", str(hub_dir)]) == 2
    capsys.readouterr()
    assert main(["hub", "status", "--json", "--hub-dir", str(hub_dir)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status.get("draftRows", 0) == 0, status
