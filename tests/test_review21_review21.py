"""Review 21 (review21): findings of the code review of the day's merged work."""

from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path

import pytest
from tillpoint.agent.http_api import MAX_BODY_BYTES, HttpServer
from tillpoint.agent.results import receipt_from_json
from tillpoint.sync.loopback import LoopbackHub, Till, receipt

from .conftest import CLI
from .test_review21_race21 import CARD, Interleave, hub, hub_holds, race, till

__all__ = ["hub", "till"]  # the fixtures, shared with race21's tests

TIMEOUT = 20


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 3 * MAX_BODY_BYTES])
def test_a_body_over_4_mib_from_a_keep_alive_client_gets_its_400(
    server: HttpServer, size: int
) -> None:
    """§10/§12: a request over 4 MiB is answered 400. A keep-alive client (http.client,
    requests, a POS's pooled connection) that writes its whole body before reading must
    read that answer too, not a connection reset."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request(
            "POST", "/v1/quote", body=b" " * size, headers={"Content-Type": "application/json"}
        )
        answer = conn.getresponse()
        doc = json.loads(answer.read())
    finally:
        conn.close()
    assert answer.status == 400
    assert doc["error"]["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("what", ["hold", "checkout"])
def test_the_same_call_twice_at_once_asks_the_hub_once_and_answers_the_same(
    hub: LoopbackHub, till: Till, what: str
) -> None:
    """HubTurns (agent/hub_turns.py): a POS retrying while its first call still waits for
    the hub. The retry waits its turn, finds the receipt stored and answers it, asking
    the hub nothing (race21's test pins the conflicting body; this, the same body)."""
    agent = till.agent
    gate = Interleave(agent.hub, wait_s=0.5)
    agent.hub = gate
    sale = receipt("r-twice", CARD, redeem=100)
    call = getattr(agent, what)
    first, second = race(
        gate, lambda: call(receipt_from_json(sale)), lambda: call(receipt_from_json(sale))
    )
    assert not isinstance(first, Exception), first
    assert not isinstance(second, Exception), second
    assert gate.calls == 1
    assert (second.state, second.redeemed_points, second.seq) == (
        first.state,
        first.redeemed_points,
        first.seq,
    )
    assert hub_holds(hub, "r-twice") == (first.redeemed_points, [])
    assert first.redeemed_points > 0


@pytest.mark.parametrize("address", ["hub.example:99999"])  # every case: test_review22_rev22
def test_enroll_refuses_an_address_whose_port_no_till_can_dial(
    tmp_path: Path, address: str, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub enroll --address` was checked for a ':' only: an empty port, one past 65535
    or 0 wrote a bundle the till dials in vain (and the device was enrolled: a retry
    needed --renew). HOST:PORT is read as every listen address is (`split_listen`).
    In this process (the end-to-end run of the command: test_review22_rev22)."""
    monkeypatch.setenv("TILLPOINT_HUB_DIR", str(tmp_path / "hub"))
    assert cli("hub", "init").code == 0
    done = cli("hub", "enroll", "till-1", "--address", address)
    assert done.code == 2, done.err
    assert "port" in done.err and "Traceback" not in done.err, done.err
    status = cli("hub", "status")
    assert status.code == 0 and "till-1" not in status.out  # nothing enrolled


def test_sync_install_asks_whether_an_agent_runs_without_taking_its_lock(
    hub: LoopbackHub, tmp_path: Path, cli: CLI
) -> None:
    """`sync install` says to restart a running `tillpoint run`. It found one by taking the
    data directory's lock for a moment (and writing its own pid in it): a `run` starting
    in that moment was refused, "another tillpoint (pid N) is running", exit 2, which the
    packaged unit does not restart, leaving the till without loyalty. It now reads who
    holds the lock without taking it: the lock file is left as it was (here: not made)."""
    from tillpoint.sync import pki

    made = pki.issue_device(hub.dir.keys, "till-1")
    run = cli("sync", "install", pki.make_bundle(hub.dir.keys, made, hub.address))
    assert run.code == 0, run.err
    assert not (tmp_path / "data" / "tillpoint.lock").exists()


def test_the_lock_holder_is_read_from_the_kernels_list_of_locks(tmp_path: Path) -> None:
    """A real flock held by another process is found by its pid, and no lock is taken."""
    import sys

    from tillpoint.agent.lock import DataDirLock

    lock_file = tmp_path / "tillpoint.lock"
    lock_file.write_text("")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR);"
            "fcntl.flock(fd,fcntl.LOCK_EX);print('held',flush=True);time.sleep(30)",
            str(lock_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert DataDirLock(tmp_path).holder() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert DataDirLock(tmp_path).holder() is None


def test_the_lock_holder_is_found_on_overlayfs_by_its_inode() -> None:
    """In a container the kernel lists the lower file system's device, not stat()'s."""
    from tillpoint.agent.lock import flock_holder

    locks = (
        "1: POSIX  ADVISORY  WRITE 10 fe:00:77 0 EOF\n"
        "2: FLOCK  ADVISORY  WRITE 4242 00:2a:2147334 0 EOF\n"
        "3: FLOCK  ADVISORY  WRITE 5151 fe:00:99 0 EOF\n"
    )
    assert flock_holder(locks, 0xFE, 0, 99) == "5151"
    # overlay: the device differs; the pid written in the lock file says it is ours
    assert flock_holder(locks, 0, 0x31, 2147334, "4242") == "4242"
    assert flock_holder(locks, 0, 0x31, 2147334) is None  # nothing written: unknown
    assert flock_holder(locks, 0, 0x31, 2147334, "999") is None  # a stranger's file
    assert flock_holder(locks, 0, 0x31, 12345, "4242") is None
    two = locks + "4: FLOCK  ADVISORY  WRITE 6161 00:2b:2147334 0 EOF\n"
    assert flock_holder(two, 0, 0x31, 2147334, "6161") == "6161"
