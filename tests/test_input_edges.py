"""Inputs that used to reach an internal error (exit 1, HTTP 500, gRPC INTERNAL) or a wrong
place, now refused like any bad input (the contract §10: exit 2, one line, nothing
changed): times outside the years the arithmetic can represent, a program whose durations
overflow the dates worked out from a receipt, JSON nested too deeply or with a number of
thousands of digits, an empty data directory, an environment variable that is not JSON;
and a second agent on a port another one serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.errors import TillpointError
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent

from .conftest import CLI, receipt, snapshot


def _refused(run: Any, *words: str) -> None:
    assert run.code == 2, (run.out, run.err)
    assert run.out == "" and run.err.count("\n") == 1 and "Traceback" not in run.err
    for word in words:
        assert word in run.err, run.err


@pytest.mark.parametrize(
    "at",
    ["0001-01-01T00:00:00+03:00", "9999-12-31T23:59:59-12:00", "9999-12-31T23:59:59+03:00"],
)
def test_a_time_outside_the_years_is_refused_everywhere(cli: CLI, at: str) -> None:
    assert cli("snapshot", "load", snapshot()).code == 0
    for command in ("quote", "checkout", "hold"):
        run = cli(command, receipt(at=at), "--json")
        _refused(run, "at")
        assert "between the years 1900 and 9000" in run.err or "is out of range" in run.err
    _refused(cli("balance", "2770000000017", "--at", at, "--json"))
    status = cli("status", "--json").json()
    assert (status["lastSeq"], status["outboxDepth"]) == (0, 0)


def test_a_snapshot_time_that_is_no_time_in_utc_is_refused(cli: CLI) -> None:
    snap = snapshot()
    snap["customers"][0]["expiring"] = [{"points": 100, "expiresAt": "9999-12-31T23:59:59-12:00"}]
    _refused(cli("snapshot", "load", snap), "out of range")
    assert cli("status", "--json").json()["cacheVersion"] == 0


def test_an_erps_never_ending_9999_12_31_loads_and_prices(cli: CLI) -> None:
    """Offer and coupon ends are only compared: "9999-12-31T23:59:59+03:00" (an ERP's
    "never") loads. Only the times dates are worked out from are bounded (1900-9000)."""
    snap = snapshot()
    snap["offers"] = [
        {
            "id": "o-forever",
            "kind": "PERCENT_OFF",
            "skus": ["4601234000017"],
            "value": "10",
            "validTo": "9999-12-31T23:59:59+03:00",
        }
    ]
    snap["customers"][0]["expiring"] = [{"points": 100, "expiresAt": "9999-12-31T23:59:59+03:00"}]
    assert cli("snapshot", "load", snap).code == 0
    done = cli("checkout", receipt(), "--json").json()
    assert done["lines"][0]["offerId"] == "o-forever"
    pending = snapshot(version=2)
    pending["customers"][0]["pending"] = [{"points": 5, "activatesAt": "9999-01-01T00:00:00+03:00"}]
    _refused(cli("snapshot", "load", pending), "between the years")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("activationDelayDays", 1_000_000_000),
        ("activationDelayDays", 2**63 - 1),
        ("pointsLifetimeDays", 3_000_000),
        ("offerPrintCooldownDays", 3_000_000),
        ("holdTtlSeconds", 2**63 - 1),
    ],
)
def test_a_program_whose_durations_overflow_the_dates_is_refused(
    cli: CLI, field: str, value: int
) -> None:
    """A hub's typo used to load, then fail every sale of a known card."""
    assert cli("snapshot", "load", snapshot()).code == 0
    bad = snapshot(version=2)
    bad["program"][field] = value
    _refused(cli("snapshot", "load", bad), field, "at most")
    assert cli("status", "--json").json()["cacheVersion"] == 1
    assert cli("checkout", receipt(), "--json").code == 0


def test_the_largest_durations_still_price(tmp_path: Path) -> None:
    snap = snapshot()
    snap["program"].update(
        activationDelayDays=36_600,
        pointsLifetimeDays=36_600,
        offerPrintCooldownDays=36_600,
        holdTtlSeconds=36_600 * 86_400,
    )
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        held = agent.hold(agent_receipt(receipt("r1", at="8999-12-31T23:59:59+03:00")))
        assert held.state == "HELD"
        assert agent.confirm("r1").state == "CONFIRMED"
    finally:
        agent.close()


def agent_receipt(doc: dict[str, Any]) -> Any:
    from tillpoint.agent.results import receipt_from_json

    return receipt_from_json(doc)


def test_json_nested_too_deeply_or_with_a_huge_number_is_bad_input(
    cli: CLI, tmp_path: Path
) -> None:
    assert cli("snapshot", "load", snapshot()).code == 0
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    _refused(cli("quote", deep, "--json"), "not valid JSON (nested too deeply)")
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps(receipt()).replace("8990", "1" * 5001), encoding="utf-8")
    _refused(cli("checkout", huge, "--json"), "not valid JSON (a number with too many digits)")
    assert cli("status", "--json").json()["lastSeq"] == 0


def test_an_empty_data_directory_is_refused_not_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tillpoint.agent.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TILLPOINT_DEVICE_ID", "till-1")
    with pytest.raises(SystemExit) as parsed:  # argparse's own exit, as for any bad option
        main(["status", "--json", "--data-dir", ""])
    assert parsed.value.code == 2
    assert "--data-dir: must not be empty" in capsys.readouterr().err
    monkeypatch.setenv("TILLPOINT_DATA_DIR", " ")
    assert main(["status", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == (
        "tillpoint: config: data_dir must not be empty (set by TILLPOINT_DATA_DIR)"
    )
    monkeypatch.setenv("TILLPOINT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TILLPOINT_HUB", "notjson")  # not the JSON a nested setting is
    assert main(["status", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("tillpoint: config: ") and "hub" in err
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere


def test_a_second_agent_cannot_serve_a_port_another_serves(tmp_path: Path) -> None:
    """gRPC's default SO_REUSEPORT let a second `tillpoint run` bind the same port, and
    the POS's calls were shared between two data directories."""
    first_agent, second_agent = Agent(tmp_path / "a", "till-a"), Agent(tmp_path / "b", "till-b")
    server, port, _ = build_server(first_agent, "127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(TillpointError, match=f"cannot listen on 127.0.0.1:{port}"):
            build_server(second_agent, f"127.0.0.1:{port}")
    finally:
        server.stop(grace=0)
        first_agent.close()
        second_agent.close()


def test_run_on_a_metrics_port_in_use_says_which_address(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "internal error: OSError: [Errno 98] Address already in use", naming no
    address and no setting (the HTTP and gRPC ports said "cannot listen on …")."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("TILLPOINT_METRICS__LISTEN", f"127.0.0.1:{port}")
        monkeypatch.setenv("TILLPOINT_HTTP__LISTEN", "127.0.0.1:0")
        monkeypatch.setenv("TILLPOINT_SERVER__LISTEN", "127.0.0.1:0")
        run = cli("run")
    assert run.code == 1 and "Traceback" not in run.err
    assert f"cannot listen on 127.0.0.1:{port} for /metrics" in run.err
    assert "[metrics] listen" in run.err


def test_explain_is_a_json_boolean(cli: CLI) -> None:
    """`"explain": "yes"` (or 1) used to be a lax true; it is bad input like any other."""
    assert cli("snapshot", "load", snapshot()).code == 0
    for value in ("yes", 1, "true"):
        _refused(cli("quote", receipt(explain=value), "--json"), "explain")
    assert cli("quote", receipt(explain=True), "--json").json()["trace"]


def test_grpc_balance_names_its_field_not_the_cli_flag(tmp_path: Path) -> None:
    import grpc
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot())
    server, port, _ = build_server(agent, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = pb.BalanceRequest(card="2770000000017", at="yesterday")
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.PosAgentStub(channel).Balance(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("balance: at: ")
    finally:
        server.stop(grace=0)
        agent.close()


def test_rfc_3339_lowercase_t_and_z_are_the_same_time(cli: CLI) -> None:
    """RFC 3339 §5.6 allows "t" and "z" in lower case; they were refused."""
    assert cli("snapshot", "load", snapshot()).code == 0
    upper = cli("quote", receipt(at="2026-11-23T07:15:00Z"), "--json")
    lower = cli("quote", receipt(at="2026-11-23t07:15:00z"), "--json")
    assert upper.code == 0 and (lower.code, lower.out) == (0, upper.out)
    at = cli("balance", "2770000000017", "--at", "2026-11-23t07:15:00z", "--json")
    assert at.code == 0, at.err


def test_a_null_in_a_snapshot_or_a_request_is_the_field_left_out(
    cli: CLI,
) -> None:
    """proto3 JSON's "null is the default", for requests (receipts, refunds) and, since
    review 29, for snapshots too (docs/CONTRACT.md §3): a snapshot kept its nulls, and so
    took a null as the field left out where the field may be null (a customer's birthday,
    an offer's customerId) and refused it in the same rows where it may not. A card's
    `"status": null` is the status left out (ACTIVE, as a card written without one); a
    program's `null` is that field's default, as the field left out is."""
    snap = snapshot()
    snap["cards"] = [{**snap["cards"][0], "status": None}, *snap["cards"][1:]]
    assert cli("snapshot", "load", snap).code == 0
    assert cli("identify", "2770000000017", "--json").json()["status"] == "FOUND"
    snap = snapshot(version=2)
    snap["program"] = {**snap["program"], "offlineRedeemLimitPoints": None}
    assert cli("snapshot", "load", snap).code == 0
    snap = snapshot(version=3)
    snap["cards"] = [{**snap["cards"][0], "number": None}, *snap["cards"][1:]]
    _refused(cli("snapshot", "load", snap), "number")  # a required field: as left out
    assert cli("quote", receipt(redeemPoints=None), "--json").code == 0
