"""Review 32 (left32a): the last session's leftovers on the agent's side, each reproduced.

1. an unsent sale whose receiptId the hub refuses (a NUL, from an earlier release) no
   longer makes every authorisation of its customer INVALID_ARGUMENT (priced OFFLINE);
   the sale itself still reaches the hub once (CONTRACT §9);
2. a coupon code's limit holds on its normal form ("ß" × 128 is 256 characters upper-
   cased) at every door: CLI, HTTP, gRPC, snapshot (CONTRACT §13);
3. the phone key is made on a file system without hard links (vfat, some FUSE), and a
   data directory where it cannot be made is one clear line (CONTRACT §10);
4. a leap second without an offset gets the plain "has no offset" message (CONTRACT §2);
5. the count of results the devices did not take and its last error change together,
   under a lock (CONTRACT §8);
6. one predicate decides which offers go on paper (§7; behaviour unchanged, pinned by
   the printed-offers scenarios and tests).
"""

from __future__ import annotations

import errno
import io
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from tillpoint.agent.errors import StorageError
from tillpoint.agent.http_api import HttpServer
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent
from tillpoint.sync.hub_import import RowProblem, read_json
from tillpoint.sync.loopback import LoopbackHub, sample_master_data
from tillpoint.sync.loopback import receipt as hub_receipt
from tillpoint.sync.push import Pusher
from tillpoint.v1 import tillpoint_pb2 as pb

from .conftest import CLI, answered, enrolled_till, posagent_stub, receipt, snapshot
from .test_http_api import Client, error_of

TIMEOUT = 10
ANNA = "2770000000017"  # c-1 of the hub's sample data: 1,200 points

# ---------------------------------------------------------------- 1. unsent ids the hub refuses


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LoopbackHub]:
    store = None
    if request.param == "postgresql":
        store = str(request.getfixturevalue("pg_url"))
    hub = LoopbackHub(tmp_path / "hub", data=sample_master_data(), store=store)
    yield hub
    hub.stop()


def _as_an_earlier_release_kept_it(data_dir: Path, receipt_id: str, kept_as: str) -> None:
    """The sale `receipt_id` as an earlier release committed it: under `kept_as`, an id
    today's doors refuse (every table that names the receipt)."""
    with sqlite3.connect(data_dir / "ledger.db") as conn:
        for table, column in (
            ("receipts", "receipt_id"),
            ("receipt_lines", "receipt_id"),
            ("points", "receipt_id"),
            ("journal", "ref_id"),
        ):
            conn.execute(
                f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (kept_as, receipt_id)
            )
        for column in ("request", "result"):  # the documents the push sends
            (text,) = conn.execute(
                f"SELECT {column} FROM receipts WHERE receipt_id = ?", (kept_as,)
            ).fetchone()
            doc = json.loads(text)
            assert doc["receiptId"] == receipt_id
            doc["receiptId"] = kept_as
            conn.execute(
                f"UPDATE receipts SET {column} = ? WHERE receipt_id = ?", (json.dumps(doc), kept_as)
            )
        changed = conn.execute("SELECT count(*) FROM receipts WHERE receipt_id = ?", (kept_as,))
        assert changed.fetchone() == (1,)
    conn.close()


@pytest.mark.parametrize("kept_as", ["r\x00old", "r" * 129], ids=["nul", "129-characters"])
def test_an_unsent_sale_with_an_id_the_hub_refuses_leaves_its_customer_online(
    hub: LoopbackHub, tmp_path: Path, kept_as: str
) -> None:
    """CONTRACT §9: a Hold or Checkout that redeems asks the hub with this till's unsent
    movements of the customer's points (`UnsyncedPoints`, each with its receiptId). A
    sale an earlier release committed under an id the hub refuses (a NUL, more than 128
    characters) made every such request INVALID_ARGUMENT until review 32: the customer
    was priced OFFLINE (the offline limit) on this till until the push. The till now
    sends such a movement without its receiptId (the hub counts it by its seq; the id
    only settles a hold of that receipt, which the hub never placed for an id it
    refuses), and the sale itself reaches the hub once."""
    till = enrolled_till(hub, tmp_path / "till", "till-1", timings=answered())
    try:
        online = till.agent.hub
        till.agent.hub = None  # the earlier release's sale: priced offline, no hold at the hub
        old = till.agent.checkout(receipt_from_json(hub_receipt("r-old", ANNA, redeem=40)))
        assert (old.mode, old.redeemed_points) == ("OFFLINE", 40)
        till.agent.hub = online
        _as_an_earlier_release_kept_it(till.data_dir, "r-old", kept_as)

        new = till.agent.checkout(receipt_from_json(hub_receipt("r-new", ANNA, redeem=-1)))
        assert new.mode == "ONLINE"  # was OFFLINE: the hub answered INVALID_ARGUMENT
        assert new.redeemed_points == 53  # 30 % of 179.80

        pusher = Pusher(till.data_dir, "till-1", till.link, call_timeout_s=5)
        pusher.drain()
        set_aside = list(pusher.set_aside)
        assert pusher.drain() == 0  # nothing more: each sale went once
        stored = {t.seq: t.receipt_id for t in hub.store.transactions("till-1")}
        till_side = till.agent.balance(ANNA).available_points
        hub_side = hub.store.balance("c-1", datetime.now(UTC)).available
        if "\x00" not in kept_as:  # both sales stored and counted once, as on the till
            assert set_aside == []
            assert stored == {1: kept_as, 2: "r-new"}
            assert hub_side == till_side
            return
        # A NUL no PostgreSQL text holds: set aside (REJECTED) on either store, and said
        # at both ends; the push failed UNAVAILABLE on PostgreSQL until review 32, for
        # good, the till's outbox blocked behind it (SQLite stored it).
        reason = "receiptId: a NUL character cannot be stored"
        assert set_aside == [(1, "REJECTED", reason)]
        assert stored == {2: "r-new"}
        aside = hub.store.set_aside_transactions("till-1")
        assert [(a["seq"], a["outcome"], a["reason"]) for a in aside] == [(1, "REJECTED", reason)]
        assert till.agent.status().to_json()["setAside"] == 1
        # the set-aside sale's movement (40 spent, 9 earned) is not counted there
        assert old.earned_points == 9
        assert hub_side == till_side + 40 - 9
    finally:
        till.stop()


# ---------------------------------------------------------------- 2. coupon codes, normalised

LONG_ONCE_UPPER = "ß" * 128  # 128 characters as scanned, "SS" × 128 = 256 as looked up


def _cache_version(cli: CLI) -> int:
    run = cli("status", "--json")
    assert run.code == 0, run.err
    return int(run.json()["cacheVersion"])


def test_a_coupon_code_over_128_characters_once_upper_cased_is_refused_at_every_door(
    agent: Agent, cli: CLI
) -> None:
    """CONTRACT §13: a code is looked up in its normal form (blanks and dashes dropped,
    upper case), and the hub takes codes of 1 to 128 characters. "ß" × 128 is 128
    characters as given and 256 upper-cased ("SS"): taken until review 32 in a receipt
    (the hub then refused the whole AuthorizeRedemption: the receipt priced OFFLINE) and
    in a snapshot (a coupon no online receipt could use). Now the 128 holds on the normal
    form at every door, bad input in one line; 128 once upper-cased is still taken."""
    said = "coupons[0] is too long once upper-cased (at most 128 characters"
    body = receipt("r-ss", coupons=[LONG_ONCE_UPPER])
    with posagent_stub(agent) as stub:
        with pytest.raises(grpc.RpcError) as err:
            stub.Quote(json_format.ParseDict(body, pb.Receipt()), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert said in (err.value.details() or "")
    server = HttpServer(agent, "127.0.0.1:0")
    server.start()
    pos = Client(server.port)
    try:
        status, code, message = error_of(pos.post("/v1/checkout", body))
        assert (status, code) == (400, "INVALID_ARGUMENT") and said in message, message
        # 64 × "ß" is 128 characters upper-cased: a code like any other (unknown here)
        fits = pos.post("/v1/quote", receipt("r-ss", coupons=["ß" * 64])).json()
        assert fits["coupons"] == [{"code": "SS" * 64, "status": "REJECTED", "reason": "UNKNOWN"}]
    finally:
        pos.close()
        server.stop()
    assert agent.status().to_json()["lastSeq"] == 0  # nothing committed
    assert cli("snapshot", "load", snapshot()).code == 0
    run = cli("checkout", body, "--json")
    assert run.code == 2 and run.out == "" and said in run.err, run.err
    assert "\n" not in run.err.strip()
    # a snapshot's coupon: the same limit on the code it is stored under
    version = _cache_version(cli)
    coupon = {"code": LONG_ONCE_UPPER, "offerId": "o-1"}
    run = cli("snapshot", "load", snapshot(version=version + 1, coupons=[coupon]))
    assert run.code == 2 and "coupons[0]" in run.err and "at most 128 characters" in run.err
    assert "\n" not in run.err.strip(), run.err
    assert _cache_version(cli) == version  # the cache unchanged
    coupon = {"code": "ß" * 64, "offerId": "o-1"}
    assert cli("snapshot", "load", snapshot(version=version + 1, coupons=[coupon])).code == 0
    # and the hub's import, which reads its rows with the same models
    raw = json.dumps({"coupons": [{"code": LONG_ONCE_UPPER, "offerId": "o-1"}]}).encode()
    (problem,) = read_json(io.BytesIO(raw), len(raw), None)
    assert isinstance(problem, RowProblem) and problem.where == "coupons[0]"
    assert "at most 128 characters" in problem.message


# ---------------------------------------------------------------- 3. no hard links


def _no_hard_links(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`os.link` failing as on vfat (EPERM: the file system has no link operation) or a
    FUSE file system without links (EOPNOTSUPP). Simulated at that one system call: this
    machine's kernel has no vfat and the tests do not load kernel modules or mount file
    systems (a shared machine); what the code does after the errno is what is tested."""
    tried: list[str] = []

    def link(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        tried.append(str(dst))
        raise PermissionError(errno.EPERM, "Operation not permitted", str(src), None, str(dst))

    monkeypatch.setattr(os, "link", link)
    return tried


def test_the_phone_key_is_made_on_a_file_system_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: CLI
) -> None:
    """CONTRACT §10: the phone key is made whole under a name of its own and linked in
    (review 31). A data directory on vfat (a USB stick, an EFI partition) has no hard
    links: every command failed there, "internal error: PermissionError: [Errno 1]
    Operation not permitted: '…/phone.key.….tmp' -> '…/phone.key'" (exit 1). Now the
    key is renamed in under an exclusive lock of the data directory instead: made once,
    whole, 0600, nothing else left."""
    from tillpoint.agent import db

    tried = _no_hard_links(monkeypatch)
    run = cli("snapshot", "load", snapshot())
    assert run.code == 0, run.err
    assert tried and tried[0].endswith("phone.key")
    data = tmp_path / "data"
    key = db.phone_secret(data)
    assert len(key) == 32 and bytes.fromhex((data / "phone.key").read_text()) == key
    assert (data / "phone.key").stat().st_mode & 0o777 == 0o600
    assert not [p.name for p in data.iterdir() if ".tmp" in p.name or "phone.key." in p.name]


def test_two_makers_without_hard_links_read_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As review 31's race, on a file system without links: a second maker while the
    first is between writing its key and renaming it in waits for the first's lock and
    reads its key (a plain rename would have replaced the key the first had read)."""
    from tillpoint.agent import db

    _no_hard_links(monkeypatch)
    data = tmp_path / "data"
    real_replace = os.replace
    other: list[bytes] = []
    makers: list[threading.Thread] = []

    def replace_while_the_other_starts(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        if str(dst).endswith("phone.key") and not makers:  # another process, just now
            maker = threading.Thread(target=lambda: other.append(db.phone_secret(data)))
            makers.append(maker)
            maker.start()
        real_replace(src, dst, *args, **kw)

    monkeypatch.setattr(os, "replace", replace_while_the_other_starts)
    mine = db.phone_secret(data)
    makers[0].join(TIMEOUT)
    assert other == [mine]
    assert bytes.fromhex((data / "phone.key").read_text()) == mine
    assert sorted(p.name for p in data.iterdir()) == ["phone.key"]


def test_a_data_directory_where_the_key_cannot_be_made_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hard links and no locks either (a FUSE file system without both): one line
    naming the file and why, not a raw PermissionError; nothing left behind."""
    import fcntl

    from tillpoint.agent import db

    _no_hard_links(monkeypatch)

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    data = tmp_path / "data"
    with pytest.raises(StorageError) as refused:
        db.phone_secret(data)
    said = str(refused.value)
    assert "\n" not in said and "phone.key" in said and "hard links" in said, said
    assert list(data.iterdir()) == []


# ---------------------------------------------------------------- 4. a leap second, no offset


@pytest.mark.parametrize(
    ("at", "example"),
    [
        ("2026-12-31T23:59:60", "2026-12-31T23:59:60Z"),
        ("2027-01-01T02:59:60.5", "2027-01-01T02:59:60.5+03:00"),
        ("2026-12-31T18:59:60", "2026-12-31T18:59:60-05:00"),
        ("2026-12-31T10:15:60", "2026-12-31T10:15:60+03:00"),
    ],
)
def test_a_leap_second_without_an_offset_is_told_it_has_no_offset(
    cli: CLI, at: str, example: str
) -> None:
    """CONTRACT §2: a time without an offset is told so, with the time given and an offset
    added ('has no offset: add one, as in "…+03:00"'); a leap second without one got the
    general "is not an RFC 3339 time with an offset" until review 32. Its example is one
    the till takes: the offset that makes it 23:59:60 in UTC when there is one."""
    assert cli("snapshot", "load", snapshot()).code == 0
    run = cli("quote", receipt(at=at), "--json")
    assert run.code == 2 and run.out == "", run.err
    assert f'"{at}" has no offset: add one, as in "{example}"' in run.err, run.err
    if example.endswith(("Z", ":00")) and ":59:60" in at:
        assert cli("quote", receipt(at=example), "--json").code == 0, example


# ---------------------------------------------------------------- 5. the hand-off count


def test_a_status_never_counts_a_device_miss_without_its_error(tmp_path: Path) -> None:
    """CONTRACT §8: `deviceHandoffFailures` and `deviceHandoffLastError` (review 31) were
    written one after the other, with the error's words made in between (the exception's
    `str`, any code), outside any lock, while `status` read them from another thread: a
    status then counted a failure and said nothing of it (and the `+= 1`'s read and write
    could interleave with another's). Both now change together under a lock."""
    inside, go = threading.Event(), threading.Event()

    class SlowToSay(OSError):
        def __str__(self) -> str:
            if sys._getframe(1).f_code.co_name == "_tell_devices":
                inside.set()
                go.wait(TIMEOUT)
            return "the display's port went away"

    from tillpoint.printer.config import DisplayConfig, PrinterConfig, ScannerConfig
    from tillpoint.printer.service import Devices

    class FailingHandoff(Devices):
        def after_checkout(self, result: Any) -> None:
            raise SlowToSay()

    data = tmp_path / "data"
    agent = Agent(data, "till-1")
    agent.load_snapshot(snapshot())
    agent.devices = FailingHandoff(
        data / "ledger.db", PrinterConfig(), DisplayConfig(), ScannerConfig()
    )
    sale = threading.Thread(
        target=lambda: agent.checkout(receipt_from_json(receipt("s-1"))), daemon=True
    )
    try:
        sale.start()
        assert inside.wait(TIMEOUT)
        meanwhile = agent.status().to_json()
        go.set()
        sale.join(TIMEOUT)
        assert (meanwhile["deviceHandoffFailures"], meanwhile["deviceHandoffLastError"]) == (0, "")
        after = agent.status().to_json()
        assert after["deviceHandoffFailures"] == 1
        assert (
            after["deviceHandoffLastError"]
            == "after_checkout: SlowToSay: the display's port went away"
        )
    finally:
        go.set()
        agent.close()


def test_device_misses_from_many_threads_are_all_counted(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "data", "till-1")

    class Devices:
        def show(self, result: Any) -> None:
            raise OSError("gone")

    agent.devices = Devices()  # type: ignore[assignment]
    threads = [
        threading.Thread(target=lambda: [agent._tell_devices("show", None) for _ in range(200)])
        for _ in range(8)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert agent._device_misses == 8 * 200
    finally:
        agent.close()


def test_a_phone_key_cut_short_is_refused_in_one_line(tmp_path: Path, cli: CLI) -> None:
    """A file system without a journal (vfat) may keep a renamed file cut short after a
    power cut. An empty `phone.key` read as an empty key until review 32: every phone
    hashed with it, silently finding nobody. Now refused saying what to do."""
    from tillpoint.agent import db

    data = tmp_path / "data"
    assert cli("snapshot", "load", snapshot()).code == 0
    (data / "phone.key").write_text("")
    with pytest.raises(StorageError) as refused:
        db.phone_secret(data)
    assert "phone.key is damaged" in str(refused.value)
    run = cli("status", "--json")
    assert run.code != 0 and run.err.count("\n") == 1 and "phone.key" in run.err, run.err
    assert "internal error" not in run.err
