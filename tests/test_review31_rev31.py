"""Review 31 (rev31): a second look at this session's merged changes.

Each test pins a fault found in (or a branch left untested by) the session's changes:
the clock mark put back when a write transaction that followed a clock step rolls back
(CONTRACT §11), a waiting coupon of a customer the hub removed (CONTRACT §7), the full-disk
hint on a file system that reports no size (CONTRACT §12), and a hub asked to listen on
":PORT" where that port is in use (CONTRACT §10).
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tillpoint.agent.results import receipt_from_json
from tillpoint.agent.service import Agent

from .conftest import REPO, SteppingClock
from .test_review31_long31 import ANNA, DEVICE, _next_visit, _sale, stepped_while_it_asks

TILLPOINT = str(Path(sys.executable).with_name("tillpoint"))


def _expires(agent: Agent, rid: str, body: dict[str, Any]) -> datetime:
    """The `holdExpiresAt` a retried Hold of the open hold `rid` answers."""
    held = agent.hold(receipt_from_json(body)).to_json()
    assert (held["receiptId"], held["state"]) == (rid, "HELD")
    return datetime.fromisoformat(held["holdExpiresAt"])


# ------------------------------------------------- a clock step followed, then rolled back


def test_a_step_followed_in_a_hold_that_rolls_back_is_followed_by_the_next_call(
    tmp_path: Path,
) -> None:
    """CONTRACT §11: open holds keep their time left across a step of the wall clock. A
    receipt held again after its hold expired is priced inside the write transaction,
    asking the hub; NTP set the clock an hour back during that request, and the hold
    moved the other open holds by the step in its transaction (`_follow_clock_step_here`).
    That transaction then failed (the ledger refused the new hold's row), so the move was
    rolled back with it: the next call must see the step again and move them, or every
    open hold outlives its time here by an hour (past the hub's copy of it)."""
    from tillpoint.agent.errors import StorageError

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    refuse = (
        "CREATE TRIGGER refuse_new_holds BEFORE INSERT ON receipt_life"
        " BEGIN SELECT RAISE(ABORT, 'the ledger refused the row'); END"
    )
    with stepped_while_it_asks(tmp_path, clock, 3.0) as (agent, data, steps, _):
        program = {**data["program"], "holdTtlSeconds": 600}
        agent.load_snapshot({**data, "version": 1, "baseVersion": 0, "program": program})
        again = _sale("h-1", clock())  # redeems: the hub is asked
        assert agent.hold(receipt_from_json(again)).to_json()["state"] == "HELD"
        clock.passes(300)
        other = _sale("h-0", clock(), redeemPoints=0)
        assert agent.hold(receipt_from_json(other)).to_json()["state"] == "HELD"
        before = _expires(agent, "h-0", other)
        clock.passes(301)  # h-1 ran out; h-0 has 299 s left

        # the ledger refuses the new hold's row (as a full disk would), after the step
        with sqlite3.connect(tmp_path / "till" / "ledger.db") as side:
            side.execute(refuse)
        steps.append(-3600.0)
        with pytest.raises(StorageError):
            agent.hold(receipt_from_json(again))
        with sqlite3.connect(tmp_path / "till" / "ledger.db") as side:
            side.execute("DROP TRIGGER refuse_new_holds")

        # the next call follows the step the rolled-back transaction had followed
        assert _expires(agent, "h-0", other) == before - timedelta(hours=1)
        assert agent.confirm("h-0").to_json()["state"] == "CONFIRMED"


def test_a_rolled_back_step_is_not_counted_twice_when_another_thread_took_a_later_one(
    tmp_path: Path,
) -> None:
    """CONTRACT §11, the agent's threads: a Hold's transaction followed a step of an hour
    back (`_follow_clock_step_here`); before it rolled back, the clock was set half an
    hour forward and another call (a quote, the hold sweeper: `_follow_clock_step`) took
    that step and waited for the agent's lock to move the holds. The rollback put back
    the mark from before BOTH steps, so after the other call moved the holds by +30 min,
    the next reading found -30 min (both steps) and moved them again: the open holds
    ended where they began, not 30 min back with the wall clock (the +30 min counted
    twice, the hour lost). Undoing only the rolled-back step keeps them right."""
    from .conftest import snapshot

    clock = SteppingClock(datetime.fromisoformat("2026-11-23T10:00:00+03:00"))
    agent = Agent(tmp_path / "data", DEVICE, clock=clock, monotonic=clock.steady)
    try:
        agent.load_snapshot(snapshot())
        body = _sale("h-0", clock(), redeemPoints=0)
        assert agent.hold(receipt_from_json(body)).to_json()["state"] == "HELD"
        before = _expires(agent, "h-0", body)
        other: threading.Thread | None = None
        with agent._lock, pytest.raises(RuntimeError, match="rolled back"):  # noqa: SIM117
            with agent._write():
                clock.stepped(-3600.0)
                agent._follow_clock_step_here()  # moved in this transaction
                clock.stepped(+1800.0)
                clock.read_by = set()
                other = threading.Thread(target=agent._follow_clock_step, daemon=True)
                other.start()  # sees the +30 min step, then waits for the lock
                deadline = time.monotonic() + 10.0
                while other.ident not in clock.read_by:
                    assert time.monotonic() < deadline, "the other call never read the clock"
                    time.sleep(0.01)
                raise RuntimeError("rolled back")  # the transaction fails after the step
        assert other is not None
        other.join(timeout=10.0)
        assert not other.is_alive()
        clock.passes(1)
        # the holds moved with the wall clock, by both steps once: -60 + 30 min
        assert _expires(agent, "h-0", body) == before - timedelta(minutes=30)
    finally:
        agent.close()


# ------------------------------------------------- a waiting coupon, its customer gone


def test_a_waiting_coupon_of_a_customer_the_hub_removed_is_not_printed(tmp_path: Path) -> None:
    """CONTRACT §7: a job that waited for the printer prints what the snapshot still
    offers; Confirm picks nothing for "a customer no longer in the cache". A delta removed
    the customer (card closed, data erased) while the coupon waited: the worker still
    printed the customer's personal offers, codes no till would honour for anyone (a
    personal offer applies to its customer alone, and no card identifies them now)."""
    from tillpoint.printer.config import PrinterConfig
    from tillpoint.printer.queue import PrintWorker, list_jobs
    from tillpoint.printer.virtual import VirtualPrinter

    from .conftest import receipt, snapshot

    now = datetime.fromisoformat("2026-11-23T10:20:00+03:00")
    data = tmp_path / "data"
    agent = Agent(data, DEVICE, clock=lambda: now)
    offers = [_next_visit("o-a", 1), _next_visit("o-b", 2)]
    try:
        first = snapshot(offers=offers)
        agent.load_snapshot(first)
        sale = agent.checkout(receipt_from_json(receipt("r1"))).to_json()
        assert sale["printedOffers"] == ["o-a", "o-b"]
        assert agent.offers_on_paper(["o-a", "o-b"]) == {
            "o-a": (datetime.fromisoformat(offers[0]["validTo"]), "Предложение o-a"),
            "o-b": (datetime.fromisoformat(offers[1]["validTo"]), "Предложение o-b"),
        }
        cards = [c["number"] for c in first["cards"] if c["customerId"] == "c-a"]
        assert ANNA in cards
        agent.load_snapshot(
            {
                "version": 2,
                "baseVersion": 1,
                "removed": {"customers": ["c-a"], "cards": cards},
            }
        )
        assert agent.offers_on_paper(["o-a", "o-b"]) == {}
        with VirtualPrinter() as printer:
            config = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port)
            worker = PrintWorker(
                data / "ledger.db", config, clock=lambda: now, offers_now=agent.offers_on_paper
            )
            try:
                worker.run_once()
            finally:
                worker.close()
            assert printer.complete == []
        (job,) = list_jobs(data / "ledger.db", "r1", include_done=True)
        assert job["state"] == "FAILED", job
        assert "every offer was withdrawn by the hub" in str(job["last_error"]), job
    finally:
        agent.close()


# ------------------------------------------------- the full-disk hint on odd mounts


def test_a_file_system_that_reports_no_size_is_not_said_full() -> None:
    """CONTRACT §12: a storage error names a full disk when there is one. A file system
    that reports no size at all (statvfs: 0 blocks, 0 free: procfs, sysfs, some FUSE and
    network mounts) was said "full (0 KiB free)" on any storage error under it, sending
    support to free space on a disk that has no size to fill."""
    import os

    from tillpoint.agent.db import full_disk_hint

    fs = os.statvfs("/proc/self")
    assert (fs.f_blocks, fs.f_bavail) == (0, 0)  # the odd mount this test needs
    assert full_disk_hint(Path("/proc/self/no-such-ledger.db")) == ""


# ------------------------------------------------- hub serve --listen :PORT in use


def _imported_hub(tmp_path: Path) -> Path:
    """A hub directory with the examples' catalogue imported (`hub import`)."""
    hub = tmp_path / "hub"
    catalogue = str(REPO / "examples" / "catalogue.json")
    imported = subprocess.run(
        [TILLPOINT, "hub", "import", catalogue, "--hub-dir", str(hub)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    return hub


def test_the_hub_on_any_address_listens_or_says_its_port_is_in_use(tmp_path: Path) -> None:
    """CONTRACT §10 (one clear line). `hub serve --listen :PORT` (any address; the
    `--port-file` help names `--listen :0`) was taken by the hub's check and never bound:
    grpcio refuses an empty host ("host must not be empty"), and the hub said after
    gRPC's own log line "cannot listen on :0: ':0': expected HOST:PORT", refusing as
    malformed what it had accepted. ":PORT" is now any IPv4 address, as the default
    0.0.0.0:50070 is: a free port is served, a port in use is said so in one line."""
    hub = _imported_hub(tmp_path)
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        run = subprocess.run(
            [TILLPOINT, "hub", "serve", "--hub-dir", str(hub), "--listen", f":{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert run.returncode == 1, (run.returncode, run.stderr)
    assert run.stderr.count("\n") == 1, run.stderr  # no gRPC core log line before it
    assert f"cannot listen on 0.0.0.0:{port}: Address already in use" in run.stderr, run.stderr

    port_file = tmp_path / "port"
    served = subprocess.Popen(
        [
            TILLPOINT,
            "hub",
            "serve",
            "--hub-dir",
            str(hub),
            "--listen",
            ":0",
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30.0
        while not port_file.exists():
            assert served.poll() is None, served.communicate(timeout=10)[1]
            assert time.monotonic() < deadline, "the hub wrote no port file"
            time.sleep(0.05)
        bound = int(port_file.read_text().strip())
        with socket.create_connection(("127.0.0.1", bound), timeout=5.0):
            pass  # the hub listens there
    finally:
        served.terminate()
        _, err = served.communicate(timeout=30)
    assert served.returncode == 0, err


# ------------------------------------------------- a listen host name of IPv6 addresses only

_V6_ONLY_NAME = r"""
set -u
mount --bind "$HOSTS" /etc/hosts || exit 90
"$TP" hub serve --hub-dir "$HUB" --listen v6only-tillpoint:0 --port-file "$PF" 2>"$ERR" &
pid=$!
i=0
while [ ! -s "$PF" ] && kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do
    sleep 0.1; i=$((i + 1))
done
if [ ! -s "$PF" ]; then cat "$ERR"; kill -TERM "$pid" 2>/dev/null; exit 91; fi
echo "port=$(cat "$PF")"
kill -TERM "$pid"; wait "$pid"; echo "rc=$?"
"""


@pytest.mark.slow  # a hub started and stopped in a mount namespace of its own: ~5 s
def test_a_listen_name_of_ipv6_addresses_only_is_served(tmp_path: Path) -> None:
    """CONTRACT §10: `listen` is HOST:PORT, a host name too. A name whose addresses are
    IPv6 only (an IPv6-only site's own name in /etc/hosts) was bound by grpcio until the
    bind probe came before it: the probe made an IPv4 socket for every name and refused
    "Name or service not known" (the hub's and the agent's gRPC server alike). The probe
    now binds each address the name has, as grpcio does."""
    from .test_review31_ops31 import _env, _in_own_mount_namespace

    hub = _imported_hub(tmp_path)
    hosts = tmp_path / "hosts"
    # "::" (every IPv6 address): glibc answers an IPv4 lookup of a name for ::1 with
    # 127.0.0.1, and no other IPv6 address is on every test machine
    hosts.write_text("127.0.0.1 localhost\n:: v6only-tillpoint\n", encoding="ascii")
    env = _env(
        HOSTS=str(hosts),
        TP=TILLPOINT,
        HUB=str(hub),
        PF=str(tmp_path / "port"),
        ERR=str(tmp_path / "err"),
    )
    run = _in_own_mount_namespace(_V6_ONLY_NAME, env)
    if run.returncode == 90:
        pytest.skip(f"cannot bind-mount /etc/hosts here: {run.stdout}{run.stderr}")
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr)
    assert "port=" in run.stdout and "rc=0" in run.stdout, run.stdout
