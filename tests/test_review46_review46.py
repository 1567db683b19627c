"""Review 46 (review46): a second pair of eyes on the session's product changes
(pgrace46's hub lock order and points-hold drop, reset46's owed releases, flake46's
handback of logging and signals in `main(argv)`).

Each test pins a promise the helpers' own tests (tests/test_review46_*.py) do not hold:

- flake46 hands the caller's SIGTERM, SIGINT and SIGHUP handlers back when `main(argv)`
  returns. A process whose program is `main(argv)` (bench/serving_ab.py runs `run` so)
  must still stop as `tillpoint run` does: SIGHUP logged and ignored while it serves,
  SIGTERM and SIGINT a clean stop, exit 0. The suite's process tests use the `tillpoint`
  script, whose `main()` takes the other branch. Real process, real ports, systemd's
  notify socket for READY.
- pgrace46's drop in `hold_coupons` (a points hold of the receipt placed before the
  call's arrival): two calls with the same arrival (a hub clock of coarse resolution, or
  one stepped back onto the same microsecond) do not drop each other's hold, and a
  call's own points hold stays whatever its stamp's sub-second digits (the bound is
  `arrived` − 1 µs, in text, compared as text: checked at a second's and a
  millisecond's edge). Both hub stores.
- pgrace46's migration 12: a hub of the release before (schema 11, this module's
  migrations up to 11 stand for its code) refuses the migrated database cleanly (a
  `StorageError` naming the later release, no traceback), and the migrated database
  answers this release's claims with the holds it had.
- reset46: a reset run twice within the window keeps each owed release once (the second
  reset lists the kept row again, releases it once more, and keeps it; the gauge counts
  it once); a receipt held again after the reset OFFLINE, without asking the hub (its
  commit forgets the kept row, and the hub has no newer hold to refuse the late grant),
  then cancelled: the late grant is released by the Cancel's own release. Real hub on
  127.0.0.1 (SQLite), tills with their links and ledgers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from tillpoint.agent.service import Agent
from tillpoint.v1 import tillpoint_pb2 as pb
from tillpoint.v1 import tillpoint_pb2_grpc as pb_grpc

from .conftest import free_port, snapshot
from .test_review39_flake39 import held_back as held_back  # the fixture of `hub`
from .test_review39_flake39 import hub as hub  # the fixture: flake39's hub
from .test_review44_hold44 import second as second  # the fixture
from .test_review45_ask45 import late_hub as late_hub  # the fixture: hold44's hub, SQLite

# ------------------------------------------------ flake46: main(argv) as a process's program

MAIN_ARGV = "import sys; from tillpoint.agent.cli import main; sys.exit(main(sys.argv[1:]))"


def till_config(tmp_path: Path) -> tuple[Path, int]:
    """A till's data with the snapshot loaded and its configuration file: gRPC on a free
    port of 127.0.0.1 (returned), HTTP on any, no /metrics, JSON logs."""
    data = tmp_path / "data"
    Agent(data, "till-1").load_snapshot(snapshot())
    port = free_port()
    conf = tmp_path / "tillpoint.toml"
    conf.write_text(
        f'device_id = "till-1"\ndata_dir = "{data}"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        "[metrics]\nenabled = false\n"
        '[http]\nlisten = "127.0.0.1:0"\n'
        '[log]\nformat = "json"\n'
    )
    return conf, port


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_under_main_argv_as_its_own_process_stops_on_its_signals_as_before(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """CONTRACT §10 (a clean stop is exit 0), DECISIONS flake46. `main(argv)` hands the
    caller's signal handlers back when it returns, not before: a process whose program is
    `main(argv)` runs `run` with `run`'s handlers (SIGHUP logged and ignored, the agent
    still serving; SIGTERM or SIGINT the drained stop, exit 0, "stopped" logged). Found
    right; pinned, since the suite's process tests all start the `tillpoint` script."""
    conf, port = till_config(tmp_path)
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    env.pop("TILLPOINT_DEVICE_ID", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN_ARGV, "--config", str(conf), "run"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert notify.recv(100).decode() == "READY=1"
        proc.send_signal(signal.SIGHUP)  # logged and ignored: still serving
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PosAgentStub(channel)
            assert stub.Status(pb.StatusRequest(), timeout=20).device_id == "till-1"
        assert proc.poll() is None
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        assert "SIGHUP ignored" in err, err[-3000:]
        assert '"stopped"' in err, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()


# ------------------------------------------------ pgrace46: what the coupon step's drop keeps


def _edge() -> datetime:
    """The next whole second of the wall clock (the holds live in real time): an arrival
    whose `arrived` − 1 µs is the second before, 59.999999 s in text."""
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)


def test_a_coupon_step_keeps_its_own_points_hold_at_a_seconds_edge_on_both_paths(
    hub_store_factory: Any,
) -> None:
    """DECISIONS pgrace46 (b). The drop's bound is the text of `arrived` − 1 µs, compared
    as text with the holds' `created_at`: an arrival on a whole second has its bound in
    the second before ("…:59.999999Z"). The call's own points hold (stamped at the
    arrival, "….000000Z"), placed by the optimistic claim or by the locked path (the till
    lists an unsent movement), stays; a hold placed 1 µs before the arrival goes. Found
    right on both stores."""
    from tillpoint.agent.ledger import utc_text
    from tillpoint.sync.hub_store import Unsynced

    from .test_hub_claim import NOW
    from .test_review46_pgrace46 import CUSTOMER, DEVICE, TTL_S, _hub, _points_holds

    hub = _hub(hub_store_factory())
    arrived = _edge()
    assert utc_text(arrived).endswith(".000000Z")
    # the optimistic path (no unsent movements)
    assert hub.authorise(DEVICE, "r1", CUSTOMER, 300, NOW, [], arrived, TTL_S).authorised == 300
    assert (
        hub.hold_coupons(DEVICE, "r1", CUSTOMER, ["NEW-1"], arrived, TTL_S, arrived=arrived) == []
    )
    assert _points_holds(hub, "r1") == [(300, utc_text(arrived))]
    # the locked path (an unsent spend of the till's)
    unsent = [Unsynced(1, "r-0", -50)]
    assert hub.authorise(DEVICE, "r2", CUSTOMER, 200, NOW, unsent, arrived, TTL_S).authorised == 200
    assert (
        hub.hold_coupons(DEVICE, "r2", CUSTOMER, ["NEW-2"], arrived, TTL_S, arrived=arrived) == []
    )
    assert _points_holds(hub, "r2") == [(200, utc_text(arrived))]
    # a hold of r3 placed 1 µs before its newer call came (the call's points step wrote
    # nothing): dropped by that call's coupon step
    before = arrived - timedelta(microseconds=1)
    assert hub.authorise(DEVICE, "r3", CUSTOMER, 0, NOW, [], arrived, TTL_S).authorised == 0
    assert hub.authorise(DEVICE, "r3", CUSTOMER, 100, NOW, [], before, TTL_S).authorised == 100
    assert (
        hub.hold_coupons(DEVICE, "r3", CUSTOMER, ["NEW-3"], arrived, TTL_S, arrived=arrived) == []
    )
    assert _points_holds(hub, "r3") == []
    assert hub.balance(CUSTOMER, NOW).held == 300 + 200 + 50


def test_two_calls_of_one_receipt_with_the_same_arrival_keep_each_others_points_hold(
    hub_store_factory: Any,
) -> None:
    """DECISIONS pgrace46 (b), review 39 (grant39). Two calls of one receipt stamped with
    the same arrival (a hub clock stepped back onto the microsecond of an earlier call, or
    one of coarse resolution) cannot be told apart: the later coupon step neither refuses
    as `Superseded` (nothing placed after its arrival) nor drops the other's points hold
    (nothing placed before it). The receipt keeps the hold, as grant39 keeps the older
    call's hold when the stamps are out of order; no hold of the same stamp is dropped.
    Found right on both stores (the lesser harm: a hold kept for the receipt's life, not
    the points of a priced receipt given to another till)."""
    from tillpoint.agent.ledger import utc_text

    from .test_hub_claim import NOW
    from .test_review46_pgrace46 import CUSTOMER, DEVICE, TTL_S, _coupon_holds, _hub, _points_holds

    hub = _hub(hub_store_factory())
    arrived = _edge()
    assert hub.authorise(DEVICE, "r1", CUSTOMER, 0, NOW, [], arrived, TTL_S).authorised == 0
    assert hub.authorise(DEVICE, "r1", CUSTOMER, 100, NOW, [], arrived, TTL_S).authorised == 100
    assert (
        hub.hold_coupons(DEVICE, "r1", CUSTOMER, ["NEW-1"], arrived, TTL_S, arrived=arrived) == []
    )
    assert _points_holds(hub, "r1") == [(100, utc_text(arrived))]
    assert _coupon_holds(hub, "r1") == [("NEW-1", utc_text(arrived))]


# ------------------------------------------------ reset46: a reset run twice within the window


def test_a_second_reset_within_the_window_keeps_the_owed_release_once(
    hub: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DECISIONS reset46. An engineer runs `reset` again (the first one's answer not read,
    or a script that resets twice) while a release it kept owed is still in its window:
    the second reset lists the kept row (an unstored ask), releases it once more, keeps it
    owed again at the ask's own time (the row as it was: the window does not grow), and
    the gauge counts it once; nothing is left to expire at the hub. Found right."""
    from tillpoint.agent import ledger

    from .conftest import enrolled_till
    from .test_review33_hold33 import a_receipt, held_at_hub
    from .test_review44_hold44 import TIMINGS
    from .test_review46_reset46 import asks, failing_commit

    a = enrolled_till(hub, tmp_path / "a", "a", timings=TIMINGS)
    try:
        with monkeypatch.context() as m:
            m.setattr(ledger, "insert_life", failing_commit)
            with pytest.raises(Exception, match="disk I/O error"):
                a.agent.hold(a_receipt("lost-1"))
        kept = asks(a.data_dir)
        assert [r for r, _ in kept] == ["lost-1"]
        first = a.agent.reset(force=True)
        assert (first.hub_holds_released, first.hub_releases_owed) == (1, 1)
        assert held_at_hub(hub) == 0
        second = a.agent.reset(force=True)
        assert second.hub_releases_owed == 1
        assert second.hub_holds_left == 0
        assert second.hub_releases_owed_until  # told again (the wall clock, as the first)
        assert asks(a.data_dir) == kept  # the ask's own time, kept once
        assert a.agent.hub_calls_owed() == {"release": 1, "shrink": 0}
        assert held_at_hub(hub) == 0
    finally:
        a.stop()


def test_a_receipt_held_again_offline_after_the_reset_leaves_no_late_grant_held(
    late_hub: Any, tmp_path: Path, second: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DECISIONS reset46. The reset kept r's release owed (a Hold that asked twice, its
    second grant on its way). The POS sends the Hold again under the same receiptId while
    the till cannot reach the hub: stored OFFLINE without asking it. Its commit forgets
    the kept row (as an ONLINE hold's does, whose grant39 stamp then refuses the late
    grant); here the hub has no newer hold, the late grant lands and is kept (the offline
    limit), and the POS then cancels: the Cancel's release (the new hold's own, owed as an
    OFFLINE hold's) drops it, and nothing stays owed after the window. Found right."""
    from tillpoint.agent.service import LATE_GRANT_S
    from tillpoint.sync.pull import Puller

    from .conftest import ManualClock, enrolled_till
    from .test_review33_hold33 import OFFLINE_LIMIT, a_receipt, held_at_hub
    from .test_review44_hold44 import TIMINGS, held_twice
    from .test_review46_reset46 import Away

    clock = ManualClock(datetime.now(UTC))
    a = enrolled_till(late_hub, tmp_path / "a", "a", timings=TIMINGS, clock=clock)
    real = a.agent.hub
    try:
        held_twice(a, second, monkeypatch, "twice-o", clock())
        assert a.agent.reset(force=True).hub_releases_owed == 1
        Puller(a.agent, a.link, a.link.enrollment, call_timeout_s=5).pull()
        clock.advance(5)
        a.agent.hub = Away(real)
        again = a.agent.hold(a_receipt("twice-o", at=clock()))
        assert again.mode == "OFFLINE"
        a.agent.hub = real
        second.go.set()
        assert second.done.wait(30)
        assert held_at_hub(late_hub) == OFFLINE_LIMIT  # the late grant, landed
        assert a.agent.cancel("twice-o").state == "CANCELLED"
        a.agent.retry_hub_releases()
        clock.advance(LATE_GRANT_S + 10)
        a.agent.retry_hub_releases()
        assert held_at_hub(late_hub) == 0
        assert a.agent.hub_calls_owed() == {"release": 0, "shrink": 0}
    finally:
        second.go.set()
        a.stop()
