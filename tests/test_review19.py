"""Faults found in session 19's audits and notes, each with the test that failed before."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import json_format
from tillpoint.agent.expiry import Movement, wallet_of
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import CLI, ChannelStates, grpc_served, receipt, snapshot

AT = "2026-11-24T12:00:00+03:00"


class Display:
    """What the agent tells the till's devices (agent/service.py DeviceNotifier), kept as
    the lines a pole display would show."""

    def __init__(self) -> None:
        self.lines: list[list[str]] = []

    def show(self, lines: Sequence[str]) -> None:
        self.lines.append(list(lines))

    def after_quote(self, result: Any) -> None:
        self.lines.append(list(result.display))

    def after_checkout(self, result: Any) -> None:
        self.after_quote(result)

    def status(self) -> Mapping[str, Any]:
        return {name: {"state": "OK"} for name in ("printer", "display", "scanner")}


def test_a_cancel_takes_the_held_total_off_the_display(tmp_path: Path) -> None:
    """§8/§11: a cancelled hold (payment failed, basket abandoned) left its total on the
    pole display and in the result's `display`. Only the receipt on display is cleared: a
    POS tidying an older hold must not blank the next customer's total."""
    display = Display()
    agent = Agent(tmp_path / "data", "till-1", devices=display)
    try:
        agent.load_snapshot(snapshot())
        held = agent.hold(receipt_from_json(receipt("r1")))
        assert display.lines[-1] == list(held.display) != ["Чек отменён", ""]
        cancelled = agent.cancel("r1")
        assert list(cancelled.display) == ["Чек отменён", ""]
        assert display.lines[-1] == ["Чек отменён", ""]
        assert agent.cancel("r1").to_json() == cancelled.to_json()  # idempotent

        agent.hold(receipt_from_json(receipt("r2")))
        agent.hold(receipt_from_json(receipt("r3")))
        shown = display.lines[-1]
        agent.cancel("r2")  # not the receipt on display
        assert display.lines[-1] == shown
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("kind", "row"),
    [
        ("products", {"sku": "4601234000062", "excludedFromLoyalty": "yes"}),
        ("products", {"sku": "4601234000062", "excludedFromLoyalty": 1}),
        ("offers", {"id": "o-b", "kind": "PERCENT_OFF", "value": "5", "printable": "true"}),
        ("offers", {"id": "o-b", "kind": "PERCENT_OFF", "value": "5", "couponRequired": 0}),
        ("offers", {"id": "o-b", "kind": "PERCENT_OFF", "value": "5", "onFavoriteWeekday": 1}),
    ],
)
def test_a_snapshots_yes_or_1_is_not_a_boolean(
    tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch, kind: str, row: dict[str, Any]
) -> None:
    """Snapshots are proto3 JSON: a boolean is `true` or `false`. "yes", "true" or 1 for
    `excludedFromLoyalty` loaded as true (tobacco earned nothing by a guess), 0 as false;
    the receipt's `explain` was strict already. Refused, the cache left as it was."""
    assert cli("snapshot", "load", snapshot()).code == 0
    run = cli("snapshot", "load", snapshot(version=2, **{kind: [row]}))
    assert run.code == 2 and "must be true or false" in run.err, run.err
    assert cli("status", "--json").json()["cacheVersion"] == 1
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    run = cli("hub", "import", {kind: [row]})
    assert run.code == 2 and "must be true or false" in run.err, run.err


@pytest.mark.parametrize(
    ("at", "words"),
    [
        ("2026-11-23T10:15:00+0300", "is not an RFC 3339 time"),
        ("20261123T101500+03:00", "is not an RFC 3339 time"),
        ("2026-W48-1T10:15:00+03:00", "is not an RFC 3339 time"),
        ("1700000000", "is not an RFC 3339 time"),
        ("2026-11-23T10+03:00", "is not an RFC 3339 time"),
        ("2026-02-30T10:15:00+03:00", "is not a day of the calendar"),
        ("2026-11-24T09:00:00", 'has no offset: add one, as in "2026-11-24T09:00:00+03:00"'),
    ],
)
def test_a_time_is_rfc_3339_not_any_iso_8601(tmp_path: Path, cli: CLI, at: str, words: str) -> None:
    """§2: "Time stamps are RFC 3339 with an offset". ISO 8601's other spellings were taken
    (a basic-format time, a week date, "+0300", no seconds) and, in JSON text read by
    pydantic-core (snapshot rows, an HTTP body), a unix time; the same time read from a
    plain JSON snapshot was refused. Now every reader refuses them, with one message."""
    assert cli("snapshot", "load", snapshot()).code == 0
    for command in ("quote", "checkout"):
        run = cli(command, receipt(at=at), "--json")
        assert run.code == 2 and words in run.err, run.err
    offer = {"id": "o-t", "kind": "PERCENT_OFF", "value": "5", "validTo": at}
    for path in (None, "jsonl"):
        snap = snapshot(version=2, offers=[offer])
        if path == "jsonl":  # the rows read by pydantic-core from JSON text
            head = {k: v for k, v in snap.items() if not isinstance(v, list)}
            lines = [{"format": "tillpoint.snapshot/jsonl", **head}]
            for section in ("products", "customers", "cards", "offers"):
                lines += [{"section": section}, *snap[section]]
            file = tmp_path / "snap.jsonl"
            file.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
            run = cli("snapshot", "load", str(file))
        else:
            run = cli("snapshot", "load", snap)
        assert run.code == 2 and words in run.err, run.err
    assert cli("status", "--json").json()["cacheVersion"] == 1


@pytest.mark.parametrize(
    "at",
    ["2026-11-23t10:15:00z", "2026-11-23 10:15:00.123456789+03:00", "2026-11-23T10:15+03:00"],
)
def test_rfc_3339s_own_freedoms_are_taken(cli: CLI, at: str) -> None:
    """RFC 3339 §5.6 allows a lowercase "t" and "z" and a space for the "T"; a fraction
    finer than microseconds is cut; no seconds is Java's `OffsetDateTime.toString()` at
    a whole minute, read from a receipt and from a snapshot's JSON text alike."""
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("quote", receipt(at=at), "--json").code == 0
    offer = {"id": "o-t", "kind": "PERCENT_OFF", "value": "5", "validTo": at}
    assert cli("snapshot", "load", snapshot(version=2, offers=[offer])).code == 0


def test_confirm_and_cancel_take_the_proto_field_names_over_http(
    agent: Agent, server: HttpServer
) -> None:
    """§1: the bodies are proto3 JSON, whose readers take a field's proto name as well as
    its lowerCamelCase one; receipts and refunds did (`receipt_id`, `price_minor`), the
    small bodies refused `receipt_id` and `fiscal_document` ("is not a known field")."""
    from .test_http_api import Client, error_of

    client = Client(server.port)
    try:
        for rid in ("p1", "p2"):
            assert client.post("/v1/hold", receipt(rid)).status == 200
        done = client.post("/v1/confirm", {"receipt_id": "p1", "fiscal_document": "FD-1"})
        assert done.status == 200, done.body
        assert done.json()["state"] == "CONFIRMED"
        ledger = sqlite3.connect(agent.data_dir / "ledger.db")
        try:
            kept = "SELECT fiscal_document FROM receipt_life WHERE receipt_id = 'p1'"
            assert ledger.execute(kept).fetchone() == ("FD-1",)
        finally:
            ledger.close()
        assert client.post("/v1/cancel", {"receipt_id": "p2"}).json()["state"] == "CANCELLED"
        assert client.post("/v1/balance", {"card": "2770000000017", "at": AT}).status == 200
        twice = client.post("/v1/cancel", {"receipt_id": "p2", "receiptId": "p2"})
        assert error_of(twice)[:2] == (400, "INVALID_ARGUMENT")
        assert "given twice" in error_of(twice)[2]
        unknown = client.post("/v1/cancel", {"receipt": "p2"})
        assert "receipt is not a known field" in error_of(unknown)[2]
    finally:
        client.close()


# ---------------------------------------------------------------- a debt and expiring points

ZONE = ZoneInfo("Europe/Moscow")


def _day(day: int, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, 10, tzinfo=ZONE)


def test_a_debt_is_paid_by_the_points_earned_after_it_not_left_beside_them() -> None:
    """A take-back beyond the balance is a debt (§6: "a balance may go below zero"). The
    points earned after it sat beside it in full: `expiring` listed 100 for a customer
    with 50, and when those 100 expired the customer was at -50 though they had never
    spent more than they had since. Now the earned points pay the debt as they become
    spendable: 50 left, 50 listed, 0 after the expiry."""
    sold, spent, returned, earned = _day(1), _day(2), _day(3), _day(4)
    expires = _day(4, 12)
    moves = [
        Movement("earn", 50, "r-1", sold, False, sold, None),
        Movement("spend", -50, "r-2", spent, False),
        Movement("spend", -50, "r-1", returned, True),  # r-1 returned: its 50 taken back
        Movement("earn", 100, "r-3", earned, False, earned, expires),
    ]
    wallet = wallet_of(0, [], [], moves, 30, ZONE)
    assert wallet.points_at(_day(5)) == (50, 0)
    assert wallet.expiring_at(_day(5)) == [(50, expires)]
    assert wallet_of(0, [], [], moves, 30, ZONE).points_at(_day(10, 12)) == (0, 0)


def test_a_returned_sale_gives_back_into_the_points_that_paid_its_debt() -> None:
    """r-2 spent 80 with 20 to spend: 60 of debt, paid since by r-3's 100. Returning r-2
    gives its 80 back: 60 into r-3's batch (it paid them), 20 where they came from; the
    balance is what it would be without r-2, and so is what expires when."""
    first = _day(1, 12)
    moves = [
        Movement("earn", 20, "r-1", _day(1), False, _day(1), None),
        Movement("spend", -80, "r-2", _day(2), False),
        Movement("earn", 100, "r-3", _day(3), False, _day(3), first),
        Movement("spend", 80, "r-2", _day(4), True),
    ]
    wallet = wallet_of(0, [], [], moves, 30, ZONE)
    assert wallet.points_at(_day(5)) == (120, 0)
    assert wallet.expiring_at(_day(5)) == [(100, first)]
    assert wallet_of(0, [], [], moves, 30, ZONE).points_at(_day(2, 12)) == (20, 0)


def test_a_snapshots_expiring_parts_above_its_balance_are_a_debt_they_pay(cli: CLI) -> None:
    """A hub that counted a debt (two tills spending the same points offline) published
    `balancePoints` 35 with `expiring` 17 + 55: the till listed 72 points to expire for a
    customer with 35, and was at -37 once they had. The debt is paid by the parts, the
    soonest first: 35 listed (of the later part), 0 after both dates."""
    customer = {
        "id": "c-a",
        "firstName": "Анна",
        "tier": "gold",
        "balancePoints": 35,
        "expiring": [
            {"points": 17, "expiresAt": "2026-12-01T23:59:59+03:00"},
            {"points": 55, "expiresAt": "2026-12-31T23:59:59+03:00"},
        ],
    }
    snap = snapshot(program={"pointsLifetimeDays": 365})
    snap["customers"][0] = customer
    assert cli("snapshot", "load", snap).code == 0
    now = cli("balance", "2770000000017", "--at", "2026-11-24T12:00:00+03:00", "--json")
    assert now.json() == {
        "availablePoints": 35,
        "pendingPoints": 0,
        "expiring": [{"points": 35, "expiresAt": "2026-12-31T23:59:59+03:00"}],
    }
    later = cli("balance", "2770000000017", "--at", "2027-01-05T12:00:00+03:00", "--json")
    assert later.json() == {"availablePoints": 0, "pendingPoints": 0}


def _history(rng: random.Random, lifetime: int) -> tuple[list[Movement], datetime]:
    """A customer's sales and refunds as the till journals them: a sale spends and earns
    (its points active at once or 14 days later), a refund gives back part of what a
    sale spent and takes back part of what it earned (off the pending batch while it is
    pending, else as a spend)."""
    moves: list[Movement] = []
    sales: list[list[Any]] = []
    at = _day(1)
    for n in range(rng.randint(1, 12)):
        at = at + timedelta(days=rng.choice([0, 1, 2, 5]))
        if rng.random() < 0.45 or not sales:
            rid = f"s{n}"
            spend, earn = rng.choice([0, 0, 20, 50, 120]), rng.choice([0, 10, 30, 100])
            active = at + timedelta(days=rng.choice([0, 14]))
            if spend:
                moves.append(Movement("spend", -spend, rid, at, False))
            if earn:
                ends = active + timedelta(days=lifetime) if lifetime else None
                moves.append(Movement("earn", earn, rid, at, False, active, ends))
            sales.append([rid, spend, earn, active])
        else:
            sale = rng.choice(sales)
            rid, spend, earn, active = sale
            if spend:
                back = rng.randint(1, spend)
                sale[1] -= back
                moves.append(Movement("spend", back, rid, at, True))
            if earn:
                taken = rng.randint(1, earn)
                sale[2] -= taken
                if active > at:  # still pending: off its own batch
                    moves.append(Movement("earn", -taken, rid, at, False, active, None))
                else:
                    moves.append(Movement("spend", -taken, rid, at, True))
    return moves, at


def _hub_order(moves: list[Movement]) -> list[Movement]:
    """The hub's replay (`sync.hub_rules._wallet`): the earns not active at their sale
    first, at their activation time, then everything else in time order."""
    later = [m for m in moves if m.kind == "earn" and m.points > 0 and m.activates_at != m.at]
    return [
        *(m._replace(at=m.activates_at) for m in later),
        *(m for m in moves if m not in later),
    ]


@pytest.mark.parametrize("seed", range(300))
def test_debts_and_expiring_points_agree_at_the_till_and_the_hub(seed: int) -> None:
    """Whatever happened: the till's replay and the hub's (another order) give the same
    balance and the same points to expire at any time; while points are owed nothing is
    listed to expire, nor more than is available; and a query never changes what the
    movements after it give (the first cut of the debt's rule had all three wrong)."""
    rng = random.Random(seed)
    lifetime = rng.choice([4, 30, 365])
    balance = rng.choice([0, 0, 40])
    parts = [(30, _day(3))] if balance and rng.random() < 0.5 else []
    moves, last = _history(rng, lifetime)
    for days in (0, 1, 5, 40, 400):
        moment = last + timedelta(days=days)
        till = wallet_of(balance, parts, [], moves, lifetime, ZONE)
        hub = wallet_of(balance, parts, [], _hub_order(moves), lifetime, ZONE)
        available, pending = till.points_at(moment)
        listed = till.expiring_at(moment, limit=100)
        assert hub.points_at(moment) == (available, pending)
        assert hub.expiring_at(moment, limit=100) == listed
        total = sum(points for points, _ in listed)
        assert total <= max(available, 0) and (total == 0 or available >= 0)
        asked = wallet_of(balance, parts, [], [], lifetime, ZONE)
        for move in moves:  # the same replay, asked about every moment on the way
            asked.apply(move)
            asked.points_at(move.at + timedelta(hours=rng.randint(0, 60)))
        assert asked.points_at(moment) == (available, pending)
        assert asked.expiring_at(moment, limit=100) == listed


def test_another_basket_under_a_held_receipt_id_is_quoted_beside_the_hold(cli: CLI) -> None:
    """A quote of a held receipt leaves its own hold out (it answers what Confirm
    commits). Another basket under that receiptId is no retry of the hold (its Hold is a
    409): it was priced with the hold left out as well, offering points the hold keeps
    and that no sale could then use. Now it is priced beside the hold, as under a new id."""
    snap = snapshot()
    snap["customers"][0]["balancePoints"] = 250
    assert cli("snapshot", "load", snap).code == 0
    line = {"sku": "4601234000017", "qty": "2", "priceMinor": 20000}
    basket = receipt("r1", lines=[line], redeemPoints=-1)
    held = cli("hold", basket, "--json").json()
    assert held["state"] == "HELD" and held["redeemedPoints"] > 0
    left = 250 - held["redeemedPoints"]
    assert cli("quote", basket, "--json").json()["redeemedPoints"] == held["redeemedPoints"]
    bigger = receipt("r1", lines=[line, line], redeemPoints=-1)
    other = receipt("r2", lines=[line, line], redeemPoints=-1)
    assert cli("hold", bigger, "--json").code == 2  # a conflict
    quoted = cli("quote", bigger, "--json").json()
    assert quoted["redeemedPoints"] == cli("quote", other, "--json").json()["redeemedPoints"]
    assert quoted["redeemedPoints"] <= left
    assert cli("cancel", "r1", "--json").code == 0  # then the points are free again
    assert cli("quote", bigger, "--json").json()["redeemedPoints"] > left


def test_the_same_snapshot_loaded_twice_changes_nothing_and_succeeds(cli: CLI) -> None:
    """§3 refuses an older version; the same file loaded again (a seeding script run
    twice) was refused as "not newer". It is the snapshot the cache holds: exit 0,
    nothing done. Another snapshot under that version (another `issuedAt`) is refused."""
    snap = snapshot(version=7)
    assert cli("snapshot", "load", snap).code == 0
    assert cli("checkout", receipt("r1"), "--json").code == 0
    again = cli("snapshot", "load", snap, "--json")
    assert again.code == 0 and again.json()["unchanged"] is True, again.err
    assert cli("status", "--json").json()["lastSeq"] == 1
    other = cli("snapshot", "load", snapshot(version=7, issuedAt="2026-11-23T04:00:00Z"))
    assert other.code == 2 and "not newer than the cache's 7" in other.err


def test_open_health_watches_and_reflection_streams_leave_the_pos_its_workers(
    tmp_path: Path,
) -> None:
    """Client-side health checking (grpc-java, -go, -dotnet) opens one health `Watch` a
    channel and keeps it open; a reflection tool keeps its stream open. The agent's
    decoding interceptor dropped `Watch`'s non-blocking mark, so each held one of the 8
    workers, as each reflection stream did: with 8 open, no PosAgent call was answered."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from tillpoint.agent.server import build_server
    from tillpoint.v1 import tillpoint_pb2 as pb
    from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot())
    server, port, health = build_server(agent, "127.0.0.1:0", max_workers=8)
    server.start()
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection each, as separate clients
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=own) for _ in range(19)]
    streams: list[Any] = []
    stop = threading.Event()
    try:
        for channel in channels[:10]:
            request = health_pb2.HealthCheckRequest()
            streams.append(health_pb2_grpc.HealthStub(channel).Watch(request, timeout=30))
        for channel in channels[10:18]:  # each asks once, then leaves its stream open

            def ask() -> Any:
                yield reflection_pb2.ServerReflectionRequest(list_services="")
                stop.wait(30)

            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            streams.append(stub.ServerReflectionInfo(ask(), timeout=30))
        time.sleep(0.5)  # every stream is open at the server (or waits for a thread)
        pos = pb_grpc.PosAgentStub(channels[18])
        status = pos.Status(pb.StatusRequest(), timeout=3)
        assert status.cache_version == 1
        quote = pos.Quote(json_format.Parse(json.dumps(receipt("w1")), pb.Receipt()), timeout=3)
        assert quote.receipt_id == "w1"
        assert next(streams[0]).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stop.set()
        for stream in streams:
            stream.cancel()
        for channel in channels:
            channel.close()
        health.stop_following()  # its Watches' follower reads the agent closed next
        server.stop(0).wait()
        agent.close()


def test_a_field_the_contract_lacks_is_refused_over_grpc_as_over_http(tmp_path: Path) -> None:
    """§10: unknown fields in a receipt are bad input. Over HTTP and the CLI a misspelt or
    newer field is refused; over gRPC it was kept aside unread and the sale went on
    without it. Now INVALID_ARGUMENT, naming where; a sender that writes a default value
    out (a longer, still valid encoding) is not mistaken for one."""
    import grpc
    from tillpoint.v1 import tillpoint_pb2 as pb

    agent = Agent(tmp_path / "data", "till-1")
    agent.load_snapshot(snapshot())
    try:
        with grpc_served(agent) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            checkout = channel.unary_unary(
                "/tillpoint.v1.PosAgent/Checkout",
                request_serializer=lambda raw: raw,
                response_deserializer=pb.CheckoutResult.FromString,
            )
            good = json_format.Parse(json.dumps(receipt("u1")), pb.Receipt())
            field_100 = bytes([0xA0, 0x06, 0x01])  # field 100, varint 1
            with pytest.raises(grpc.RpcError) as refused:
                checkout(good.SerializeToString() + field_100, timeout=5)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "field number 100 is not a field of Receipt" in str(refused.value.details())
            inner = pb.Receipt()
            inner.CopyFrom(good)
            inner.lines[0].MergeFromString(field_100)
            with pytest.raises(grpc.RpcError) as refused:
                checkout(inner.SerializeToString(), timeout=5)
            assert str(refused.value.details()).startswith("lines[0]: field number 100")
            assert agent.status().last_seq == 0
            # redeemPoints written out at its default, 0: a longer encoding, still taken
            number = pb.Receipt.DESCRIPTOR.fields_by_name["redeem_points"].number
            explicit = good.SerializeToString() + bytes([number << 3, 0])
            assert checkout(explicit, timeout=5).receipt_id == "u1"
    finally:
        agent.close()


def test_a_pos_pinging_its_quiet_channel_is_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A POS keeping its channel alive with pings while the till is quiet (Java's
    keepAliveWithoutCalls) was dropped after two pings with GOAWAY "too_many_pings": the
    agent kept gRPC's 5-minute minimum. It accepts a ping every 10 s now, the shortest
    interval grpc-java and grpc-go clients allow (scaled down 40 times here, with the POS
    pinging at twice that)."""
    import grpc
    from tillpoint.agent import server as server_mod

    shipped = server_mod.MIN_PING_INTERVAL_MS
    monkeypatch.setattr(server_mod, "MIN_PING_INTERVAL_MS", shipped // 40)
    agent = Agent(tmp_path / "data", "till-1")
    pinging = [
        ("grpc.keepalive_time_ms", shipped // 20),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    try:
        with grpc_served(agent) as port:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=pinging)
            states = ChannelStates(channel)
            try:
                assert states.wait_ready(), states.states
                status = channel.unary_unary(
                    "/tillpoint.v1.PosAgent/Status",
                    request_serializer=lambda raw: raw,
                    response_deserializer=lambda raw: raw,
                )
                status(b"", timeout=5)  # one call, then quiet: only pings on the channel
                time.sleep(5)  # ten of them (gRPC's default had sent GOAWAY after ~3 s)
                ready = grpc.ChannelConnectivity.READY
                assert states.since_ready() == [ready], states.states
            finally:
                states.close()
                channel.close()
    finally:
        agent.close()


def test_run_refuses_a_ledger_it_cannot_write(tmp_path: Path) -> None:
    """SQLite opened a ledger this process may not write read-only, without a word: `run`
    served (healthz 200) and answered every sale 503, which a POS retries for ever, and
    a mended file mode needed a restart anyway. Now `run` refuses to start, saying so.
    Root ignores file modes: the run drops the capabilities that let it."""
    import shutil
    import subprocess
    import sys

    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    agent.load_snapshot(snapshot())
    agent.checkout(receipt_from_json(receipt("r1")))
    agent.close()
    (data / "ledger.db").chmod(0o444)
    command = [sys.executable, "-m", "tillpoint.agent.cli", "--data-dir", str(data), "run"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root ignores file modes, and setpriv is not here to drop that")
        drop = "-dac_override,-dac_read_search,-fowner"
        command = [setpriv, "--bounding-set", drop, "--inh-caps", drop, *command]
    env = {
        **os.environ,
        "TILLPOINT_DEVICE_ID": "till-1",
        "TILLPOINT_SERVER__LISTEN": "127.0.0.1:0",
        "TILLPOINT_HTTP__LISTEN": "127.0.0.1:0",
        "TILLPOINT_METRICS__ENABLED": "false",
    }
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "ledger.db: it is read-only for this process" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_damaged_cache_is_a_storage_fault_in_words_not_a_bug(
    tmp_path: Path, server: HttpServer, agent: Agent, cli: CLI
) -> None:
    """Damaged cache pages reached the POS as 500 "a bug in tillpoint"; after a restart
    every command said "cannot migrate the database schema: database disk image is
    malformed", naming no file and no way out. Now 503 with the way out, `status` says it,
    and opening it names the cache and what to do."""
    from tillpoint.agent.db import cache_file
    from tillpoint.agent.errors import StorageError

    from .test_http_api import Client, error_of

    client = Client(server.port)
    try:
        assert client.post("/v1/quote", receipt("d1")).status == 200
        with cache_file(agent.data_dir).open("r+b") as damaged:
            damaged.seek(4096)
            damaged.write(bytes(range(256)) * 16 * 20)
        codes = set()
        for n in range(4):  # identification by phone reads the index pages
            answer = client.post("/v1/identify", {"text": f"+7916123456{n}"})
            if answer.status != 200:
                codes.add(error_of(answer)[:2])
                assert "is damaged" in error_of(answer)[2]
        answer = client.post("/v1/quote", receipt("d2", card="+79161234567"))
        assert answer.status != 500 and answer.status in (200, 503), answer.body
        assert codes <= {(503, "UNAVAILABLE")} and codes, codes
        assert "is damaged" in agent.status().to_json()["storageError"]
    finally:
        client.close()
    with pytest.raises(StorageError, match=r"cache .* is damaged .* delete .*cache\*\.db\*"):
        Agent(tmp_path / "data", "till-1")


def test_times_an_earlier_release_stored_in_the_cache_still_read(tmp_path: Path) -> None:
    """The cache keeps a customer's JSON text as loaded and reads it again at each sale.
    An earlier release took "…+0300" for an `expiresAt` in a snapshot file; after the RFC
    3339 rule that customer could no longer be read (every sale of theirs an error). Rows
    read back from the cache keep the wider reading."""
    from tillpoint.agent.db import cache_file

    snap = snapshot(program={"pointsLifetimeDays": 365})
    snap["customers"][0]["expiring"] = [{"points": 300, "expiresAt": "2026-12-31T23:59:59+03:00"}]
    agent = Agent(tmp_path / "data", "till-1")
    try:
        agent.load_snapshot(snap)
        before = agent.quote(receipt_from_json(receipt("t1"))).to_json()
    finally:
        agent.close()
    cache = sqlite3.connect(cache_file(tmp_path / "data"))
    try:
        (doc,) = cache.execute("SELECT doc FROM customers WHERE id = 'c-a'").fetchone()
        assert "+03:00" in doc
        with cache:
            cache.execute(
                "UPDATE customers SET doc = ? WHERE id = 'c-a'", (doc.replace("+03:00", "+0300"),)
            )
    finally:
        cache.close()
    agent = Agent(tmp_path / "data", "till-1")
    try:
        assert agent.quote(receipt_from_json(receipt("t1"))).to_json() == before
    finally:
        agent.close()
