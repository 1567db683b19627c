"""Review 59 (mut59d): the rest of review 59's mutation testing of `sync/cli.py`: the
till's `sync now` (`_sync_now_by`) and the hub's `enroll`, `revoke`, `export` and
`balance`, whose tool mutants review 59's first pass (mut59b) never ran.

The rules the surviving mutants showed untested, pinned on real parts: real hub
directories made by `hub import` (SQLite), the hub served in this process on a random
127.0.0.1 port (`LoopbackHub`, the server `hub serve` runs), real SQLite ledgers, and
`tillpoint.agent.cli.main` as the CLI runs it (`tests.test_sync_cli.run`). And the product
fault found, its test failing before the fix: `hub export` of a revoked till wrote the
signed snapshot (customers and all) the hub itself refuses that till.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tillpoint.sync.loopback import LoopbackHub

from tests.conftest import CLI
from tests.test_review59_mut59b import _catalogue, _hub_with_a_till, _sell_offline
from tests.test_sync_cli import run


def _published_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """A SQLite hub with the sample data published (version 1); its `--hub-dir` flag."""
    hub_dir = str(tmp_path / "hub")
    code, _, err = run(
        capsys, "hub", "import", str(_catalogue(tmp_path)), "--publish", "--hub-dir", hub_dir
    )
    assert code == 0, err
    return "--hub-dir", hub_dir


# ------------------------------------------------------------ the fault: a revoked till's export


def test_hub_export_refuses_a_revoked_till_as_the_hub_does_and_takes_it_renewed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hub answers a revoked till's calls PERMISSION_DENIED; `hub export D` of a
    revoked D wrote it the signed snapshot all the same (exit 0), the customers' data on
    a USB stick for a till the retailer cut off. Now exit 2, one line, no file; renewed
    (`hub enroll D --renew`), it is exported again."""
    h = _published_hub(tmp_path, capsys)
    assert run(capsys, "hub", "enroll", "till-1", *h, "--out", str(tmp_path / "b.json"))[0] == 0
    code, doc, err = run(capsys, "hub", "revoke", "till-1", *h, "--json")
    assert (code, doc) == (0, {"deviceId": "till-1", "revoked": True, "changed": True}), err
    out = tmp_path / "snap.json"
    for argv in (["--out", str(out)], []):
        code, printed, err = run(capsys, "hub", "export", "till-1", *h, *argv)
        assert (code, printed, err.count("\n")) == (2, "", 1), err
        assert err.startswith("tillpoint: device till-1 is revoked (since "), err
        assert err.endswith("`tillpoint hub enroll till-1 --renew` to enrol it again\n"), err
    assert not out.exists()
    renew = ["--renew", "--out", str(tmp_path / "b2.json")]
    assert run(capsys, "hub", "enroll", "till-1", *h, *renew)[0] == 0
    code, doc, err = run(capsys, "hub", "export", "till-1", *h, "--out", str(out), "--json")
    assert code == 0, err
    assert doc == {
        "deviceId": "till-1",
        "version": 1,
        "file": str(out),
        "bytes": out.stat().st_size,
    }


# ---------------------------------------------------------------- export


def test_hub_export_is_the_full_snapshot_of_the_newest_version_to_a_file_or_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file is the newest version's full snapshot (base version 0: what a till with
    nothing loads), the same bytes to standard output (exit 0), its human line naming the
    version, the device, the file and the file's size."""
    h = _published_hub(tmp_path, capsys)
    assert run(capsys, "hub", "publish", *h)[0] == 0  # version 2
    assert run(capsys, "hub", "enroll", "till-1", *h, "--out", str(tmp_path / "b.json"))[0] == 0
    out = tmp_path / "snap.json"
    code, line, err = run(capsys, "hub", "export", "till-1", *h, "--out", str(out))
    assert (code, err) == (0, "")
    size = out.stat().st_size
    assert line == f"signed snapshot 2 for till-1 in {out} ({size} bytes)\n"
    head = json.loads(out.read_text(encoding="utf-8"))
    assert (head["version"], head["baseVersion"]) == (2, 0)
    code, printed, err = run(capsys, "hub", "export", "till-1", *h)
    assert (code, err) == (0, "")
    assert printed.encode("utf-8") == out.read_bytes()


def test_hub_export_refuses_an_unknown_till_and_a_hub_with_nothing_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2, one line each, no file: an id never enrolled, and a hub with nothing
    published yet (its enrolled till has nothing to load)."""
    hub_dir = str(tmp_path / "hub")
    h = ("--hub-dir", hub_dir)
    assert run(capsys, "hub", "init", *h)[0] == 0
    assert run(capsys, "hub", "enroll", "till-1", *h, "--out", str(tmp_path / "b.json"))[0] == 0
    out = tmp_path / "snap.json"
    code, printed, err = run(capsys, "hub", "export", "till-9", *h, "--out", str(out))
    assert (code, printed, err) == (
        2,
        "",
        "tillpoint: device till-9 is not enrolled: `tillpoint hub enroll` first\n",
    )
    code, printed, err = run(capsys, "hub", "export", "till-1", *h, "--out", str(out))
    assert (code, printed, err) == (
        2,
        "",
        "tillpoint: nothing is published yet: `tillpoint hub publish` first\n",
    )
    assert not out.exists()


# ---------------------------------------------------------------- enroll and revoke


def test_hub_enroll_says_enrolled_or_revoked_of_a_known_id_and_its_bundle_and_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A known id without `--renew` is refused naming its state: "already enrolled", and
    once revoked "already revoked"; the bundle goes to `<hub>/bundles/D.json` without
    `--out`, its human line names it and the `sync install` to run; `--json` says the
    address given ("" without one)."""
    h = _published_hub(tmp_path, capsys)
    hub_dir = Path(h[1])
    code, line, err = run(capsys, "hub", "enroll", "till-1", *h)
    assert (code, err) == (0, "")
    bundle = hub_dir / "bundles" / "till-1.json"
    assert bundle.is_file()
    assert line == (
        f"device till-1 enrolled; bundle {bundle} (secret: copy it to the till and run"
        " `tillpoint sync install till-1.json`)\n"
    )
    code, out, err = run(capsys, "hub", "enroll", "till-1", *h)
    assert (code, out) == (2, "")
    assert err.startswith("tillpoint: device till-1 is already enrolled (since "), err
    code, doc, err = run(capsys, "hub", "revoke", "till-1", *h, "--json")
    assert (code, doc["revoked"], doc["changed"]) == (0, True, True), err
    code, line, err = run(capsys, "hub", "revoke", "till-1", *h)
    assert (code, line, err) == (0, "device till-1 is revoked\n", "")
    code, out, err = run(capsys, "hub", "enroll", "till-1", *h)
    assert (code, out) == (2, "")
    assert err.startswith("tillpoint: device till-1 is already revoked (since "), err
    code, doc, err = run(
        capsys, "hub", "enroll", "till-2", *h, "--address", "hub.example:7443", "--json"
    )
    assert code == 0, err
    assert (doc["deviceId"], doc["hubAddress"]) == ("till-2", "hub.example:7443")
    assert doc["bundle"] == str(hub_dir / "bundles" / "till-2.json")
    assert json.loads((hub_dir / "bundles" / "till-2.json").read_text())["hubAddress"] == (
        "hub.example:7443"
    )
    code, doc, err = run(capsys, "hub", "enroll", "till-3", *h, "--json")
    assert (code, doc["hubAddress"]) == (0, ""), err  # the till takes its configuration's


# ---------------------------------------------------------------- balance


def test_hub_balance_is_the_customers_own_now_or_at_the_time_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub balance C` is C's points, not another customer's; `--at` asks at that moment
    (before the sale pushed: none pending), without it now."""
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        assert run(capsys, "sync", "now", "--data-dir", str(till))[0] == 0
        _sell_offline(till, "r-1")
        assert run(capsys, "sync", "now", "--data-dir", str(till))[0] == 0
        h = ("--hub-dir", str(tmp_path / "hub"))
        code, now, err = run(capsys, "hub", "balance", "c-1", *h, "--json")
        assert code == 0, err
        assert now["customerId"] == "c-1"
        assert now["availablePoints"] + now["pendingPoints"] > 1200
        code, other, err = run(capsys, "hub", "balance", "c-2", *h, "--json")
        assert (code, other["availablePoints"], other["pendingPoints"]) == (0, 300, 0), err
        code, before, err = run(
            capsys, "hub", "balance", "c-1", *h, "--at", "2000-01-01T00:00:00Z", "--json"
        )
        assert code == 0, err
        assert (before["availablePoints"], before["pendingPoints"]) != (
            now["availablePoints"],
            now["pendingPoints"],
        )
        code, line, err = run(capsys, "hub", "balance", "c-2", *h)
        assert (code, err) == (0, "")
        assert line == ("c-2: 300 pts available, 0 pending, 0 held for redemptions in progress\n")
    finally:
        hub.stop()


# ---------------------------------------------------------------- sync now: set aside


def _hub_holds_another_transaction(hub: LoopbackHub, receipt_id: str) -> None:
    """The hub stores a transaction of till-1 for `receipt_id` under a seq of its own
    (a restored old disk's sale, as test_sync_reset's): the till's own sale of that
    receipt is then set aside (CONFLICT) when pushed."""
    from datetime import UTC, datetime

    from tillpoint.sync.hub_store import TxIn

    now = datetime.now(UTC)
    seq = 100 + int(receipt_id.rsplit("-", 1)[-1])
    body = json.dumps({"receiptId": receipt_id})
    old = TxIn("till-1", seq, "CHECKOUT", now.isoformat(), "c-2", "", body, "{}", 1, 0, "")
    hub.store.ingest("till-1", "", [old], now)


@pytest.mark.parametrize("count", [3, 4])
def test_sync_now_names_three_set_aside_transactions_counts_the_rest_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """Three or four of the till's sales the hub sets aside: the line says "pushed 0 …,
    N SET ASIDE by the hub", stderr one line naming the first three by seq and outcome
    and, of four, "and 1 more", exit 1 (a script retries, the support engineer looks);
    the next `sync now`, with nothing new set aside, exits 0 with the warning that N are
    unreviewed."""
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        now = ["sync", "now", "--data-dir", str(till)]
        assert run(capsys, *now)[0] == 0
        ids = [f"r-{n}" for n in range(1, count + 1)]
        for receipt_id in ids:
            _hub_holds_another_transaction(hub, receipt_id)
            _sell_offline(till, receipt_id)
        code, out, err = run(capsys, *now)
        assert code == 1, err
        assert out.startswith(f"pushed 0 transaction(s), {count} SET ASIDE by the hub, 0 waiting; ")
        assert err.count("\n") == 1, err
        assert err.startswith(
            f"tillpoint: the hub set aside {count} transaction(s) and did not store them:"
        )
        shown = err.split(": ", 2)[2]
        assert [part.split(" (")[0] for part in shown.split("; ")[:3]] == [
            "seq 1 CONFLICT",
            "seq 2 CONFLICT",
            "seq 3 CONFLICT",
        ], err
        assert "seq 4" not in err
        more = "; and 1 more" if count == 4 else ""
        assert err.endswith(f"{more}; they are kept in sync_set_aside in ledger.db\n"), err
        assert ("more" in err) == (count == 4), err  # three named: no "and 0 more"
        code, out, err = run(capsys, *now)
        assert code == 0
        assert out.startswith("pushed 0 transaction(s), 0 waiting; "), out
        assert err == (
            f"tillpoint: warning: {count} transaction(s) set aside earlier are still unreviewed"
            " (see `tillpoint status`)\n"
        )
    finally:
        hub.stop()


def test_sync_now_with_the_snapshot_refused_says_why_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version the till refuses (here expired before it arrives: `hub publish
    --ttl-hours 1e-9`): the line says "snapshot N REFUSED: why", stderr ends with the
    why as `tillpoint: …`, and the exit is 1 (CONTRACT §10: the cache keeps the old
    version, a script retries) though the push worked."""
    hub, till = _hub_with_a_till(tmp_path, monkeypatch)
    try:
        now = ["sync", "now", "--data-dir", str(till)]
        assert run(capsys, *now)[0] == 0
        h = ("--hub-dir", str(tmp_path / "hub"))
        assert run(capsys, "hub", "publish", *h, "--ttl-hours", "1e-9")[0] == 0
        _sell_offline(till, "r-1")
        code, out, err = run(capsys, *now)
        assert code == 1, (out, err)
        assert out.startswith("pushed 1 transaction(s), 0 waiting; snapshot 2 REFUSED: "), out
        why = out.split("REFUSED: ", 1)[1].rstrip("\n")
        assert "expired" in why, why
        assert err.endswith(f"tillpoint: {why}\n"), err
    finally:
        hub.stop()


def test_sync_now_cut_after_the_hub_answered_records_a_till_recorded_offline_online(
    tmp_path: Path, hub: LoopbackHub, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 37's rule from the other side: a till recorded OFFLINE (an earlier outage)
    whose `sync now` reached the hub (its mark answered) and was then cut by its own
    `--timeout` at a slow push is recorded ONLINE: the hub answered this command. (Review
    37's test starts ONLINE, which a gave-up that records nothing leaves as it was.)"""
    from tillpoint.agent.ledger import open_ledger
    from tillpoint.sync import state

    from tests.conftest import enrolled_till, receipt
    from tests.test_review36_rev36c import _recorded_mode
    from tests.test_review37_rev37b import _slow

    data = tmp_path / "data"
    enrolled_till(hub, data, "till-1").stop()
    assert cli("sync", "now", "--timeout", "30").code == 0
    conn = open_ledger(data)
    try:
        state.put(conn, {"mode": "OFFLINE"})
    finally:
        conn.close()
    assert cli("checkout", receipt("s-1"), "--json").code == 0
    _slow(monkeypatch, "PushTransactions", 2.5)
    hub.restart()  # with the slow handler
    done = cli("sync", "now", "--timeout", "1.5")
    assert done.code == 1, done.err
    assert "gave up at its deadline" in done.err, done.err
    assert _recorded_mode(data) == "ONLINE"
