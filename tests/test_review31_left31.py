"""Review 31 (left31): the leftovers of the last sessions, each decided and pinned.

1. a category a delta removed stays in its children's lineage (CONTRACT §3's example);
2. an offer window inside one second is a real one-second window;
3. a snapshot refused for an enum or a bound says so in the project's words;
4. fiscalDocument's control characters are refused naming the call, at every door;
5. `Allow:` on a GET path's 405 names HEAD too (HEAD answers there);
6. a leap second (`23:59:60Z`, RFC 3339) is taken; a second 60 elsewhere is refused plainly;
7. a printer or display that did not take a sale is counted in `status`;
8. the hold sweeper's round after the hub comes back waits a jitter of its own;
9. the phone key is made once even when two processes start together;
10. the hub store's `active_holds` wrapper is gone.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent import cache as cache_mod
from tillpoint.agent.errors import InputError
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import CLI, posagent_stub, receipt, snapshot
from .test_http_api import Client, error_of

TIMEOUT = 10
MILK = "4601234000017"  # category dairy, whose parent is food


def _offer(offer_id: str, **more: Any) -> dict[str, Any]:
    offer: dict[str, Any] = {
        "id": offer_id,
        "campaignId": "camp-" + offer_id,
        "kind": "PERCENT_OFF",
        "value": "10",
        "skus": [],
        "categories": [],
        "validFrom": "2026-11-01T00:00:00+03:00",
        "validTo": "2026-11-30T23:59:59+03:00",
    }
    offer.update(more)
    return offer


def _quote(cli: CLI, **changes: Any) -> dict[str, Any]:
    run = cli("quote", receipt(**changes), "--json")
    assert run.code == 0, run.err
    doc: dict[str, Any] = run.json()
    return doc


def _cache_rows(data_dir: Path) -> dict[str, Any]:
    conn = sqlite3.connect(data_dir / "cache.db")
    try:
        return cache_mod.dump(conn)
    finally:
        conn.close()


# ---------------------------------------------------------------- 1. a removed category


def test_a_removed_category_stays_in_its_childrens_lineage_until_they_move(cli: CLI) -> None:
    """CONTRACT §3: `removed` lists the keys that go, and a delta replaces only the rows it
    gives: the children of a removed category keep their rows (`dairy`'s parent still
    reads `food`), so an offer on `food` keeps reaching milk, as on a till that took the
    full snapshot of that version (next test). The hub moves the goods by sending
    `dairy` with a new parent: then the offer on `food` stops reaching them."""
    offers = [_offer("o-food", categories=["food"])]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    assert _quote(cli)["lines"][0]["offerId"] == "o-food"  # milk is dairy, under food
    delta = {
        "version": 2,
        "baseVersion": 1,
        "issuedAt": "2026-11-23T04:00:00Z",
        "removed": {"categories": ["food"]},
    }
    assert cli("snapshot", "load", delta).code == 0
    assert _quote(cli)["lines"][0]["offerId"] == "o-food"  # dairy still names food
    moved = {
        "version": 3,
        "baseVersion": 2,
        "issuedAt": "2026-11-23T05:00:00Z",
        "categories": [{"code": "dairy", "name": "Молочные продукты"}],
    }
    assert cli("snapshot", "load", moved).code == 0
    line = _quote(cli)["lines"][0]
    assert line["discountMinor"] == 0 and not line.get("offerId"), line


def test_a_parent_the_snapshot_does_not_list_is_an_ancestor_as_in_the_contracts_example(
    cli: CLI,
) -> None:
    """CONTRACT §3's example lists `dairy` with `"parent": "food"` and no `food` row: an
    offer on `food` reaches a dairy product all the same (§5 step 2: "any ancestor
    category"). A line's own category counts, listed or not."""
    snap = snapshot(offers=[_offer("o-food", categories=["food"])])
    snap["categories"] = [c for c in snap["categories"] if c["code"] != "food"]
    assert cli("snapshot", "load", snap).code == 0
    assert _quote(cli)["lines"][0]["offerId"] == "o-food"
    snap = snapshot(version=2, offers=[_offer("o-dairy", categories=["dairy"])])
    snap["categories"] = []
    assert cli("snapshot", "load", snap).code == 0
    assert _quote(cli)["lines"][0]["offerId"] == "o-dairy"


# ---------------------------------------------------------------- 2. a one-second window


@pytest.mark.parametrize(
    ("valid_from", "valid_to"),
    [
        ("2026-11-23T10:15:00+03:00", "2026-11-23T10:15:00+03:00"),
        ("2026-11-23T10:15:00.250+03:00", "2026-11-23T10:15:00+03:00"),
    ],
)
def test_an_offer_window_inside_one_second_is_a_one_second_window(
    cli: CLI, valid_from: str, valid_to: str
) -> None:
    """CONTRACT §2/§5: an end written in whole seconds holds through that second
    (`expiry.last_instant`), so `validTo` 10:15:00 ends at 10:15:00.999999 and a
    `validFrom` of 10:15:00.250 is before it. Such an offer was refused with the whole
    snapshot ("validFrom is after validTo") until review 31; a coupon's window was not."""
    offers = [_offer("o-flash", skus=[MILK], validFrom=valid_from, validTo=valid_to)]
    run = cli("snapshot", "load", snapshot(offers=offers))
    assert run.code == 0, run.err
    assert _quote(cli, at="2026-11-23T10:15:00.500+03:00")["lines"][0]["offerId"] == "o-flash"
    assert _quote(cli, at="2026-11-23T10:15:01+03:00")["lines"][0]["discountMinor"] == 0
    assert _quote(cli, at="2026-11-23T10:14:59+03:00")["lines"][0]["discountMinor"] == 0


def test_an_offer_that_starts_after_its_last_second_is_still_refused(cli: CLI) -> None:
    offers = [
        _offer(
            "o-bad",
            skus=[MILK],
            validFrom="2026-11-23T10:15:01+03:00",
            validTo="2026-11-23T10:15:00+03:00",
        )
    ]
    run = cli("snapshot", "load", snapshot(offers=offers))
    assert run.code == 2 and "offer o-bad: validFrom is after validTo" in run.err


# ---------------------------------------------------------------- 3. plain refusals


@pytest.mark.parametrize(
    ("section", "field", "value", "said"),
    [
        ("cards", "status", "GONE", 'cards[0].status "GONE" is not one of ACTIVE, BLOCKED or LOST'),
        ("customers", "segment", "VIP", 'customers[0].segment "VIP" is not one of NEW, ACTIVE'),
        ("customers", "favoriteWeekday", 9, "customers[0].favoriteWeekday must be 7 or less"),
        ("customers", "segment", 5, "customers[0].segment must be one of NEW, ACTIVE"),
    ],
)
def test_a_snapshot_refused_for_an_enum_or_a_bound_says_so_in_plain_words(
    cli: CLI, tmp_path: Path, section: str, field: str, value: Any, said: str
) -> None:
    """CONTRACT §10: a refusal is one line naming the field and what it must be. An enum
    or a bound refused a snapshot in pydantic's words until review 31 ("cards[0].status
    Input should be 'ACTIVE', 'BLOCKED' or 'LOST'")."""
    assert cli("snapshot", "load", snapshot()).code == 0
    before = _cache_rows(tmp_path / "data")
    bad = snapshot(version=2)
    bad[section][0][field] = value
    run = cli("snapshot", "load", bad)
    assert run.code == 2 and run.out == ""
    assert said in run.err and "Input should" not in run.err, run.err
    assert len(run.err.strip().splitlines()) == 1 and "Traceback" not in run.err
    assert _cache_rows(tmp_path / "data") == before


def test_an_offer_kind_not_in_the_contract_is_named_with_the_kinds(agent: Agent) -> None:
    with pytest.raises(InputError) as refused:
        agent.load_snapshot(snapshot(version=2, offers=[_offer("o-1", kind="HALF_OFF")]))
    assert str(refused.value).startswith('snapshot: offers[0].kind "HALF_OFF" is not one of')
    assert "PERCENT_OFF" in str(refused.value) and "'" not in str(refused.value)


# ---------------------------------------------------------------- 4. confirm's name


def test_a_fiscal_document_with_control_characters_is_refused_naming_confirm(
    agent: Agent, cli: CLI
) -> None:
    """CONTRACT §10: every refusal of a call starts with the call's name ("confirm:
    receiptId must not be empty", "confirm: fiscalDocument is too long ..."); the
    control characters' one said "fiscalDocument: must not ..." until review 31."""
    said = "confirm: fiscalDocument must not contain control characters"
    agent.hold(receipt_from_json(receipt("h-1")))
    with pytest.raises(InputError) as refused:
        agent.confirm("h-1", "FD\u00001")
    assert str(refused.value).startswith(said)
    with posagent_stub(agent) as stub:
        with pytest.raises(grpc.RpcError) as err:
            stub.Confirm(pb.ConfirmRequest(receipt_id="h-1", fiscal_document="FD\n1"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(said)
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    pos = Client(server.port)
    try:
        answer = pos.post("/v1/confirm", {"receiptId": "h-1", "fiscalDocument": "FD\t1"})
        status, code, message = error_of(answer)
        assert (status, code) == (400, "INVALID_ARGUMENT") and message.startswith(said)
    finally:
        pos.close()
        server.stop()
    assert agent.confirm("h-1", "FD 1").state == "CONFIRMED"  # nothing was changed
    assert cli("snapshot", "load", snapshot()).code == 0
    assert cli("hold", receipt("h-2"), "--json").code == 0
    run = cli("confirm", "h-2", "--fiscal", "FD\u00011", "--json")
    assert run.code == 2 and run.out == "" and run.err.startswith(f"tillpoint: {said}"), run.err


# ---------------------------------------------------------------- 5. HEAD and Allow


def test_a_get_path_answers_head_and_its_405_allows_it(server: HttpServer) -> None:
    """RFC 9110 §9.3.2 and §10.2.1: HEAD answers a GET path with the GET's head and no
    body (Starlette serves it for every GET route), so a 405 there says `Allow: GET,
    HEAD`; it said `GET` only until review 31. A POST path allows POST alone (HEAD there
    is a 405 too)."""
    pos = Client(server.port)
    try:
        for path in ("/v1/status", "/healthz", "/openapi.json"):
            got = pos.get(path)
            head = pos.call("HEAD", path)
            assert (head.status, head.body) == (got.status, b""), path
            assert head.headers["content-length"] == got.headers["content-length"], path
            assert head.headers["content-type"] == got.headers["content-type"], path
            refused = pos.post(path, {})
            assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD", path
            assert "use GET, HEAD" in error_of(refused)[2]
        refused = pos.call("HEAD", "/v1/quote")
        assert refused.status == 405 and refused.headers["allow"] == "POST"
    finally:
        pos.close()


# ---------------------------------------------------------------- 6. leap seconds


def test_a_leap_second_is_a_time_of_the_contract(cli: CLI) -> None:
    """CONTRACT §2: times are RFC 3339, whose seconds go to 60 in a leap second (§5.6,
    23:59:60 in UTC; 02:59:60+03:00 in Moscow). Taken as the last instant of second 59
    (a POSIX clock has no second 60): a sale in it is inside an offer valid through that
    day's 23:59:59 and before one starting at midnight. A second 60 at any other minute
    is no leap second and is refused saying so (until review 31 both read "is not an RFC
    3339 time with an offset")."""
    offers = [
        _offer(
            "o-day", skus=[MILK], validFrom="2026-12-31T00:00:00Z", validTo="2026-12-31T23:59:59Z"
        ),
        _offer("o-next", skus=[MILK], value="50", validFrom="2027-01-01T00:00:00Z", validTo=""),
    ]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    for at in ("2026-12-31T23:59:60Z", "2027-01-01T02:59:60.5+03:00"):
        assert _quote(cli, at=at)["lines"][0]["offerId"] == "o-day", at
    for at in ("2026-12-31T10:15:60+03:00", "2026-12-31T23:58:60Z"):
        run = cli("quote", receipt(at=at), "--json")
        assert run.code == 2 and run.out == "", at
        assert "second 60" in run.err and "leap second" in run.err and "23:59:60" in run.err


def test_an_offer_ending_in_a_leap_second_holds_through_it(cli: CLI) -> None:
    offers = [_offer("o-leap", skus=[MILK], validTo="2026-12-31T23:59:60Z")]
    assert cli("snapshot", "load", snapshot(offers=offers)).code == 0
    assert _quote(cli, at="2026-12-31T23:59:60.9Z")["lines"][0]["offerId"] == "o-leap"
    assert _quote(cli, at="2027-01-01T00:00:00Z")["lines"][0]["discountMinor"] == 0


# ---------------------------------------------------------------- 7. device hand-offs


def test_a_result_the_devices_did_not_take_is_counted_in_status(tmp_path: Path) -> None:
    """CONTRACT §8: a missing display never blocks a checkout. A hand-off to the printer
    and display service that raised (a bug, a driver's fault) was only logged until review
    31: `status` says nothing was wrong while no offer printed and the display stayed
    blank. Now `deviceHandoffFailures` counts them and `deviceHandoffLastError` says the
    last (Status fields 47, 48), in the agent's status, its JSON and the gRPC message; the
    sale itself stands."""
    from tillpoint.agent.wire import status_json
    from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig
    from tillpoint.printer.service import Devices

    class FailingHandoff(Devices):
        def after_checkout(self, result: Any) -> None:
            raise OSError("the display's port went away")

    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    agent.load_snapshot(snapshot())
    fresh = agent.status().to_json()
    assert (fresh["deviceHandoffFailures"], fresh["deviceHandoffLastError"]) == (0, "")
    agent.devices = FailingHandoff(
        data / "ledger.db", PrinterConfig(), DisplayConfig(), ScannerConfig()
    )
    try:
        for n in (1, 2):
            done = agent.checkout(receipt_from_json(receipt(f"s-{n}")))
            assert done.state == "CONFIRMED"  # committed: the devices never block a sale
        doc = agent.status().to_json()
        assert doc["deviceHandoffFailures"] == 2
        assert doc["deviceHandoffLastError"] == (
            "after_checkout: OSError: the display's port went away"
        )
        as_proto = status_json(agent.status())  # a field the proto lacks is an error
        assert as_proto["deviceHandoffFailures"] == 2
        assert as_proto["deviceHandoffLastError"] == doc["deviceHandoffLastError"]
        with posagent_stub(agent) as stub:
            answer = stub.Status(pb.StatusRequest(), timeout=TIMEOUT)
        assert answer.device_handoff_failures == 2
        assert answer.device_handoff_last_error.startswith("after_checkout: OSError")
    finally:
        agent.close()


# ---------------------------------------------------------------- 8. the sweeper's jitter


class _Draws:
    """A `random.Random` whose `uniform` records what it was asked and answers 0."""

    def __init__(self) -> None:
        self.asked: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.asked.append((low, high))
        return 0.0


def test_the_hold_sweepers_round_after_the_hub_is_back_waits_a_jitter(agent: Agent) -> None:
    """The sync's retries wait a jitter of up to `backoff_base_s` when the hub answers again
    (sync/service.py) so that a chain's tills do not arrive at one instant; the hold
    sweeper's releases went at once on the same recovery, every till together, until
    review 31. Its round after a recovery now waits a draw of [0, jitter_s] first; its
    timer's rounds do not (each till's timer started when the till did)."""
    from tillpoint.agent.server import start_hold_sweeper

    rounds = threading.Semaphore(0)
    listeners: list[Any] = []
    real = agent.retry_hub_releases

    def counted(stop: threading.Event | None = None) -> int:
        try:
            return real(stop)
        finally:
            rounds.release()

    agent.retry_hub_releases = counted  # type: ignore[method-assign]
    draws = _Draws()
    stop = start_hold_sweeper(
        agent,
        every_s=600,
        on_recovery=listeners.append,
        jitter_s=0.25,
        rng=draws,  # type: ignore[arg-type]
    )
    try:
        assert rounds.acquire(timeout=TIMEOUT)  # the first round, at once: no jitter
        assert draws.asked == []
        (hub_answers_again,) = listeners
        hub_answers_again()
        assert rounds.acquire(timeout=TIMEOUT)
        assert draws.asked == [(0, 0.25)]
    finally:
        stop()
    assert draws.asked == [(0, 0.25)]  # stopping is no recovery: nothing more drawn


# ---------------------------------------------------------------- 9. the phone key


def test_two_processes_making_the_phone_key_at_once_read_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two agents starting together on a new data directory: the second makes its key
    while the first is between writing its key and linking it in. Both wrote `phone.tmp`:
    the second's truncated and replaced the first's, linked it and removed it, and the
    first then failed (its `phone.tmp` gone) or wrote its key over the one the second had
    read (two keys: a phone hashed by one found no customer through the other). Since
    review 31 each writes a temporary file of its own (`files.create_once`); the first to
    link wins and both read its key."""
    import os

    from tillpoint.agent import db

    data = tmp_path / "data"
    real_link = os.link
    other: list[bytes] = []

    def link_after_the_other(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        if not other:  # the other process, at this very moment
            other.append(b"")
            other[0] = db.phone_secret(data)
        real_link(src, dst, *args, **kw)

    monkeypatch.setattr(os, "link", link_after_the_other)
    mine = db.phone_secret(data)
    monkeypatch.setattr(os, "link", real_link)
    assert len(mine) == 32 and mine == other[0]
    assert db.phone_secret(data) == mine
    assert bytes.fromhex((data / "phone.key").read_text()) == mine
    assert (data / "phone.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in data.iterdir()) == ["phone.key"]  # no temporary left


def test_a_phone_key_file_is_made_once_and_never_replaced(tmp_path: Path) -> None:
    from tillpoint.agent.files import create_once

    key = tmp_path / "k"
    assert create_once(key, b"first") is True
    assert create_once(key, b"second") is False
    assert key.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["k"]


# ---------------------------------------------------------------- 10. one way to read holds


def test_the_hub_store_reads_active_holds_one_way() -> None:
    """`active_holds` had become `active_holds_at` less the receipt's time; its two callers
    (the online redemption's checks) read `active_holds_at` now and the wrapper is gone
    from the store's protocol and its SQL transaction (review 31)."""
    from tillpoint.sync.hub_rules import HubTx
    from tillpoint.sync.hub_sql import SqlTx

    for kind in (HubTx, SqlTx):
        assert not hasattr(kind, "active_holds") and hasattr(kind, "active_holds_at"), kind


def test_a_long_device_error_keeps_its_start(tmp_path: Path) -> None:
    """`deviceHandoffLastError` is cut at 200 characters keeping its start: the call, the
    error's type and the start of its words (a long unbroken path had left only
    "after_checkout: OSError: [...]"), on one line."""
    from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig
    from tillpoint.printer.service import Devices

    path = "/dev/serial/by-id/" + "x" * 300

    class FailingHandoff(Devices):
        def after_checkout(self, result: Any) -> None:
            raise OSError(f"cannot open {path}\nline two")

    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    agent.load_snapshot(snapshot())
    agent.devices = FailingHandoff(
        data / "ledger.db", PrinterConfig(), DisplayConfig(), ScannerConfig()
    )
    try:
        agent.checkout(receipt_from_json(receipt("s-long")))
        said = agent.status().to_json()["deviceHandoffLastError"]
        assert said.startswith("after_checkout: OSError: cannot open /dev/serial/by-id/xxx")
        assert len(said) == 200 and said.endswith("…") and "\n" not in said
    finally:
        agent.close()
