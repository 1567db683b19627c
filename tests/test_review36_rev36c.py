"""Review 36 (rev36c): doc36's and rev36b's changes read again (CONTRACT §1, §2, §10,
§12). Each test here that names a fault failed before the fix beside it; the others pin
what was tried and found right. Real parts: an `Agent` on a temporary data directory,
its gRPC server and its HTTP interface on free loopback ports, real sockets.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.server import build_server
from tillpoint.agent.service import Agent
from tillpoint.client import ClientError, PosAgentClient
from tillpoint.sync.hub_server import HubServicer
from tillpoint.sync.loopback import LoopbackHub

from .conftest import CLI, free_port, needs_ipv6, receipt, snapshot
from .test_review35_left35 import cancelled_while_away, owed_releases

# ---------------------------------------- 1. a request's int64 at every door


@pytest.fixture
def doors(agent: Agent) -> Iterator[tuple[int, str]]:
    """The same till's HTTP interface (its port) and gRPC server (its address)."""
    http_server = HttpServer(agent, "127.0.0.1:0")
    http_server.start()
    server, port, _ = build_server(agent, "127.0.0.1:0")
    server.start()
    try:
        yield http_server.port, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()
        http_server.stop()


def _http(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        raw = json.dumps(body, ensure_ascii=False).encode()
        conn.request("POST", path, raw, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def _line(price: Any) -> list[dict[str, Any]]:
    return [{"sku": "4601234000017", "qty": "2", "priceMinor": price}]


# What the HTTP door (and the CLI, the same reading) refuses in an int64, and how.
REFUSED_INT64 = {
    "٣": "lines[0].priceMinor must be a whole number",  # Arabic-Indic three
    "８９９０": "lines[0].priceMinor must be a whole number",  # full-width digits
    "+8990": "lines[0].priceMinor must be a whole number",
    "8_990": "lines[0].priceMinor must be a whole number",
    "8990\n": "lines[0].priceMinor must be a whole number",
    "8990.0": "lines[0].priceMinor must be a whole number",
    "8.99e3": "lines[0].priceMinor must be a whole number",
    8990.0: "lines[0].priceMinor: the number 8990.0 has a decimal point",
}


def test_the_python_client_refuses_the_int64_the_http_door_refuses(
    doors: tuple[int, str],
) -> None:
    """CONTRACT §1 (`tillpoint.client` takes "these JSON dicts", the CLI's and HTTP's
    shapes), §2 ("JSON numbers with a fraction are refused anywhere"; an int64 is a JSON
    number or a string of digits), §10 (one request, one answer, whichever door). The
    client read a dict's int64 with protobuf's `ParseDict`, Python's `int()`: "٣" was
    the price 3, full-width "８９９０" 8990, "+8990", "8_990", "8990\\n", "8990.0",
    "8.99e3" and the float 8990.0 the price 8990, where HTTP and the CLI answer 400 (exit
    2) naming the field: a receipt priced by a text the rest of the till refuses. Now
    the client refuses each, `INVALID_ARGUMENT` in the agent's words, before any call;
    the digit strings the agent reads (leading zeros, "-0", int64's largest) are taken
    as the same number at both doors."""
    http_port, address = doors
    with PosAgentClient(address, timeout=5) as till:
        for price, words in REFUSED_INT64.items():
            body = receipt("r-bad", lines=_line(price))
            status, answer = _http(http_port, "/v1/quote", body)
            assert status == 400 and words in answer["error"]["message"], (price, answer)
            with pytest.raises(ClientError) as refused:
                till.quote(body)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, price
            assert words in refused.value.message, (price, refused.value.message)
            assert refused.value.attempts == 1
        for points, words in (
            ("٣", "redeemPoints must be a whole number"),
            (True, "redeemPoints must be a whole number, not true/false"),
        ):
            body = receipt("r-bad", redeemPoints=points)
            status, answer = _http(http_port, "/v1/quote", body)
            assert status == 400 and words in answer["error"]["message"], (points, answer)
            with pytest.raises(ClientError) as refused:
                till.quote(body)
            assert words in refused.value.message, (points, refused.value.message)
        proto_name = receipt(
            "r-bad", lines=[{"sku": "4601234000017", "qty": "2", "price_minor": "٣"}]
        )
        with pytest.raises(ClientError) as refused:  # its proto name, which both read
            till.quote(proto_name)
        assert "lines[0].priceMinor must be a whole number" in refused.value.message
        for price in ("08990", "0008990", 8990):
            body = receipt("r-ok", lines=_line(price))
            status, answer = _http(http_port, "/v1/quote", body)
            assert status == 200, (price, answer)
            quoted = till.quote(body)
            assert quoted["totalMinor"] == answer["totalMinor"] == 17980, price
        free = till.quote(receipt("r-free", lines=_line("-0")))
        assert free["totalMinor"] == 0
        assert _http(http_port, "/v1/quote", receipt("r-free", lines=_line("-0")))[0] == 200
        assert till.quote(receipt("r-all", redeemPoints="-1"))["redeemedPoints"] > 0
        for beyond in (2**63, str(2**63), "-9223372036854775809"):
            body = receipt("r-bad", redeemPoints=beyond)
            status, answer = _http(http_port, "/v1/quote", body)
            words = "redeemPoints does not fit in a signed 64-bit integer"
            assert status == 400 and words in answer["error"]["message"], (beyond, answer)
            with pytest.raises(ClientError) as refused:
                till.quote(body)
            assert words in refused.value.message, (beyond, refused.value.message)
        long = receipt("r-bad", redeemPoints="1" * 5000)  # past int()'s 4300 digits
        status, answer = _http(http_port, "/v1/quote", long)
        words = "redeemPoints is too long (at most 128 characters)"
        assert status == 400 and words in answer["error"]["message"], answer
        with pytest.raises(ClientError) as refused:  # not a ValueError's traceback
            till.quote(long)
        assert words in refused.value.message, refused.value.message
        largest = receipt("r-big", lines=_line(str(2**63 - 1)))
        assert _http(http_port, "/v1/quote", largest)[0] == 400  # its total does not fit
        with pytest.raises(ClientError) as big:
            till.quote(largest)
        assert big.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert till.retries == 0


# ---------------------------------------- 2. sync now's --timeout spent by the push


def test_sync_now_whose_push_spends_its_timeout_sends_no_owed_release_after_it(
    tmp_path: Path, hub: LoopbackHub, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (`sync now --timeout`: no call past it; one line, exit 1), §11 (a
    release owed stays owed until the hub takes it). A till back from an outage with a
    sale in its outbox and two releases owed; the hub answers its mark but is slower at
    the push than all of --timeout. `sync now` gives up at its deadline naming the push,
    and sends none of the owed releases after it (rev36b bounded each by what is left;
    here nothing is left, so none is asked); they stay owed, and the next `sync now`
    sends them and the sale. Found right."""
    data = tmp_path / "data"
    cancelled_while_away(hub, data, 2, sales=1)
    assert owed_releases(data) == 2
    pushed, released = HubServicer.PushTransactions, HubServicer.ReleaseRedemption
    asked: list[str] = []

    def slow_push(self: Any, request: Any, context: Any) -> Any:
        time.sleep(1.0)
        return pushed(self, request, context)

    def recording(self: Any, request: Any, context: Any) -> Any:
        asked.append(request.receipt_id)
        return released(self, request, context)

    monkeypatch.setattr(HubServicer, "PushTransactions", slow_push)
    monkeypatch.setattr(HubServicer, "ReleaseRedemption", recording)
    hub.restart()  # with these handlers
    done = cli("sync", "now", "--timeout", "0.4")
    assert done.code == 1
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert lines[0].startswith(
        "tillpoint: sync now gave up at its deadline of 0.4 s (--timeout) with the hub not"
        " taking the transactions in time (pushed 0); 1 transaction(s) still in the outbox"
    ), lines[0]
    assert asked == [] and owed_releases(data) == 2
    monkeypatch.setattr(HubServicer, "PushTransactions", pushed)
    hub.restart()
    # its releases wait for the hub's answers, not the shipped 300 ms (review 47, late47)
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "5000")
    again = cli("sync", "now", "--timeout", "30")
    assert again.code == 0, again.err
    assert sorted(asked) == ["h-0", "h-1"] and owed_releases(data) == 0
    assert [tx.receipt_id for tx in hub.store.transactions("till-1")] == ["s-0"]


def test_sync_now_whose_own_deadline_cuts_an_owed_release_leaves_the_till_online(
    tmp_path: Path, hub: LoopbackHub, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §10 (`sync now --timeout`: no call past it; `status`'s mode: ONLINE when
    the last exchange with the hub worked), §11. rev36b gives an owed release no longer
    than what is left of --timeout; a release cut so (a hub answering within the till's
    own redeem deadline, 20 s here, but not within what was left of a 1 s --timeout) was
    taken for a hub that does not answer: the link marked away, and a `sync now` that
    pushed and pulled and ended 0 left the till recorded OFFLINE ("the hub did not answer
    in time"), `tillpoint status` saying so until the next contact. The operator's
    deadline says nothing of the hub: the release stays owed, the till ONLINE."""
    data = tmp_path / "data"
    cancelled_while_away(hub, data, 1)
    assert owed_releases(data) == 1
    released = HubServicer.ReleaseRedemption

    def slow_release(self: Any, request: Any, context: Any) -> Any:
        time.sleep(2.0)  # within the till's 20 s, past what --timeout leaves
        return released(self, request, context)

    monkeypatch.setattr(HubServicer, "ReleaseRedemption", slow_release)
    hub.restart()  # with the slow handler
    monkeypatch.setenv("TILLPOINT_HUB__REDEEM_TIMEOUT_MS", "20000")
    done = cli("sync", "now", "--timeout", "1")
    assert done.code == 0, done.err
    assert owed_releases(data) == 1  # owed still: the next sync now or `run` sends it
    assert _recorded_mode(data) == "ONLINE"
    status = cli("status", "--json")
    assert status.code == 0, status.err
    assert json.loads(status.out)["mode"] == "ONLINE", status.out


def _recorded_mode(data: Path) -> str:
    from tillpoint.agent.ledger import open_ledger
    from tillpoint.sync import state

    conn = open_ledger(data)
    try:
        return str(state.sync_status(conn)["mode"])
    finally:
        conn.close()


# ---------------------------------------- 3. the half-bound check's trust, real tables


@needs_ipv6
@pytest.mark.skipif(not Path("/proc/net/tcp6").exists(), reason="the kernel's tables (Linux)")
@pytest.mark.parametrize(("ours", "theirs"), [("127.0.0.1", "::1"), ("::1", "127.0.0.1")])
def test_the_trust_rule_on_real_tables_where_our_row_is_on_another_address(
    ours: str, theirs: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    """CONTRACT §10 (a port another program holds, rev36b's trust rule). On this
    kernel's real tables: this process listens on one loopback of `localhost:PORT` and
    another program on the other, in the other table (tcp vs tcp6). Our row is seen (its
    inode is one of our descriptors), so the tables are trusted and the other program's
    row counts: "[::1]:PORT" or "127.0.0.1:PORT"; a listen on our address alone leaves it
    out. Found right."""
    from tillpoint.agent import config

    family = socket.AF_INET6 if ":" in ours else socket.AF_INET
    with socket.socket(family) as mine:
        # a port below the ephemeral range: its number is bound on the other address next,
        # where an outgoing connection's end may hold the kernel's pick (CI, review 43)
        mine.bind((ours, free_port()))
        mine.listen()
        port = mine.getsockname()[1]
        other_family = "AF_INET6" if ":" in theirs else "AF_INET"
        other = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import socket, sys\n"
                f"s = socket.socket(socket.{other_family}); s.bind(({theirs!r}, {port}))\n"
                "s.listen(); print('up', flush=True); sys.stdin.read()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(other)
        assert other.stdout is not None and other.stdout.readline() == b"up\n"
        named = f"[{theirs}]:{port}" if ":" in theirs else f"{theirs}:{port}"
        assert config.others_listening(f"localhost:{port}", port, ours=True) == [named]
        alone = f"[{ours}]:{port}" if ":" in ours else f"{ours}:{port}"
        assert config.others_listening(alone, port, ours=True) == []


# ---------------------------------------- 4. make openapi-examples anywhere


@pytest.mark.slow  # two runs of the generator in their own processes: ~5 s
def test_the_examples_generator_writes_the_same_file_in_any_zone_locale_and_hash_seed(
    tmp_path: Path,
) -> None:
    """CONTRACT §12 (`make openapi-examples`). The generator run in another time zone (a
    day ahead of UTC, and one with a half-hour offset), locale and hash seed, with a
    TILLPOINT_* setting in its environment, writes the committed file byte for byte
    (`--check`), and leaves nothing in its temporary directory (its throwaway till, whose
    ledger `fill_ledger` made unable to grow, goes with it). Found right."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILLPOINT_")}
    for zone, seed in (("Pacific/Kiritimati", "1"), ("America/St_Johns", "4242")):
        scratch = tmp_path / zone.replace("/", "-")
        scratch.mkdir()
        done = subprocess.run(
            [sys.executable, "-m", "tillpoint.agent.openapi_examples", "--check"],
            env={
                **env,
                "TZ": zone,
                "PYTHONHASHSEED": seed,
                "LC_ALL": "C",
                "TMPDIR": str(scratch),
                "TILLPOINT_HOLD_TTL_SECONDS": "5",
            },
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert list(scratch.iterdir()) == []


def test_the_cli_reads_a_receipt_files_int64_as_http_does(cli: CLI) -> None:
    """CONTRACT §1 ("the CLI reads and writes exactly these shapes"), §10, §12: a receipt
    file's int64 as a digit string (leading zeros, "-0", "-1" for `redeemPoints`) is the
    number, as over HTTP; what HTTP refuses (unicode or full-width digits, "+", a fraction,
    beyond 64 bits) is exit 2 and one line in the same words, nothing stored. Found right."""
    assert cli("snapshot", "load", snapshot()).code == 0
    done = cli("quote", receipt("r-cli", lines=_line("08990"), redeemPoints="-1"), "--json")
    assert done.code == 0, done.err
    assert json.loads(done.out)["totalMinor"] == 17980
    assert (
        json.loads(cli("quote", receipt("r-0", lines=_line("-0")), "--json").out)["totalMinor"] == 0
    )
    for price, words in (
        *REFUSED_INT64.items(),
        (str(2**63), "lines[0].priceMinor does not fit in a signed 64-bit integer"),
    ):
        refused = cli("checkout", receipt("r-bad", lines=_line(price)))
        assert refused.code == 2, (price, refused.err)
        assert refused.err.count("\n") == 1 and words in refused.err, (price, refused.err)
    assert json.loads(cli("status", "--json").out)["lastSeq"] == 0
