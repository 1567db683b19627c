"""Review 33 (rev33a): a second pair of eyes on left33's changes (CONTRACT §4, §7, §9,
§10, §12). Each test here failed before the fix beside it. Real parts: `tillpoint`
processes of this release and of the release before (built from git), real pipes and
files, the hub's directory on disk.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tillpoint.agent.files import remove_stale_temps
from tillpoint.printer.queue import ensure_schema
from tillpoint.printer.virtual import VirtualPrinter
from tillpoint.sync.hub_import import SPOOL_PREFIX, remove_stale_spools
from tillpoint.sync.loopback import LoopbackHub, sample_master_data, wait_for

from .conftest import enrolled_till, free_port
from .test_printer_queue import add_job, payload, worker
from .test_review32_rev32d import Chain, old_release

__all__ = ["old_release"]  # a fixture, used by name

# ---------------------------------------------------------------- 4. stale temporary files


def holder(path: Path) -> subprocess.Popen[bytes]:
    """A live process that has `path` open for writing and takes no lock on it (as a
    writer of a release before review 33 does), until its standard input closes."""
    code = (
        f"import sys\nf = open({str(path)!r}, 'ab')\nprint('open', flush=True)\nsys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"open\n"
    return proc


def aged(path: Path, seconds: float) -> None:
    """`path` last written `seconds` ago (a writer whose input has been quiet that long)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_temporary_file_a_live_process_holds_open_without_a_lock_is_kept(
    tmp_path: Path,
) -> None:
    """CONTRACT §12 (review 33's stale temporary files). A writer of the release before
    (no lock) whose file has not changed for two minutes (a slow standard input, or an
    import past its copy, reading it) is alive: its file is not stale. It was removed
    on the age alone, under the live writer. Once that writer is gone it is removed."""
    spool = tmp_path / f"{SPOOL_PREFIX}abcd1234"
    spool.write_bytes(b'{"customers": [')
    proc = holder(spool)
    try:
        aged(spool, 120)
        assert remove_stale_spools(tmp_path) == 0
        assert spool.exists()
        key_tmp = tmp_path / "phone.key.x1y2z3.tmp"
        key_tmp.write_bytes(b"")
        with key_tmp.open("ab"):  # this very process writes it, without a lock
            aged(key_tmp, 120)
            assert remove_stale_temps(tmp_path, "phone.key.", ".tmp") == 0
        assert key_tmp.exists()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    assert remove_stale_spools(tmp_path) == 1
    assert not spool.exists()
    assert remove_stale_temps(tmp_path, "phone.key.", ".tmp") == 1


@pytest.mark.slow
def test_an_older_releases_slow_hub_import_from_stdin_survives_the_next_hub_start(
    old_release: list[str], tmp_path: Path
) -> None:
    """CONTRACT §12. During an upgrade in place, the release before (which takes no lock
    on its copy of standard input) runs `hub import -` of a catalogue whose standard
    input is slow (a chain's export piped from its own system, GBs over minutes): its
    copy has not changed for two minutes when the new release's `hub serve` or `hub
    import` starts and cleans what killed imports left. The copy was taken for a dead
    one's and removed under the live import, which then failed (its copy read back by
    name). It is kept, and the import ends well."""
    chain = Chain(tmp_path, old_release)  # its hub, not yet upgraded
    master = json.dumps(sample_master_data()).encode()
    proc = subprocess.Popen(
        [*old_release, "hub", "import", "-", "--hub-dir", str(chain.hub_dir), "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=chain.env,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(master[: len(master) // 2])
        proc.stdin.flush()
        spool = wait_for(lambda: next(chain.hub_dir.glob(f"{SPOOL_PREFIX}*"), None), 30)
        aged(spool, 120)  # its standard input quiet for two minutes
        # what the new release's `hub import` and `hub serve` do first
        remove_stale_spools(chain.hub_dir)
        assert spool.exists()
        out, err = proc.communicate(master[len(master) // 2 :], timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)
    assert not list(chain.hub_dir.glob(f"{SPOOL_PREFIX}*"))  # its own, gone with it


# ---------------------------------------------------------------- 2. the printer's torn mark


def test_the_torn_mark_holds_each_code_once_through_a_crash_loop(tmp_path: Path) -> None:
    """CONTRACT §7. `run` killed again and again while the same coupon was sent (a crash
    loop under systemd's Restart=): each claim wrote the mark's codes and the kept ones
    again, [c], [c, c], [c, c, c]..., a row that grew by a job's codes at every start and
    that every later separator measured code by code. The codes are a set: each once."""
    ledger = tmp_path / "ledger.db"
    conn = sqlite3.connect(ledger, isolation_level=None)
    ensure_schema(conn)
    conn.close()
    with VirtualPrinter() as printer:
        for n in range(20):
            add_job(ledger, payload(f"s1-t1-{n:06d}"))
            w = worker(ledger, printer.port)
            w.recover()  # the job the last one left SENDING: failed
            job = w._head()
            assert job is not None and w._claim(job.id, ("TP1-o-1", "TP1-o-2"))  # the kill
            w._conn.close()
        w = worker(ledger, printer.port)
        try:
            assert w._torn is True
            assert w._torn_codes == ("TP1-o-1", "TP1-o-2")
        finally:
            w.close()


# ---------------------------------------------------------------- 6. the stop time told to systemd


def test_run_counts_a_sales_hub_wait_in_the_stop_time_it_tells_systemd(
    hub: LoopbackHub, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """CONTRACT §10 (a graceful stop), §9, §11. A stop waits for the calls in flight
    before it stops the printer: past the 5 s grace, a Hold or Checkout still waiting
    for the hub's answer on the redemption (`hub.redeem_timeout_ms`, up to 60 s; a hold
    may first wait for a release of its receipt, with the same deadline) and then for
    the ledger (5 s) ends first. `EXTEND_TIMEOUT_USEC` counted 5 s for them: with a 60 s
    redemption deadline and a 40 s printer confirmation the stop could run 60 s past
    what systemd was told, and systemd killed the agent mid-confirmation, the coupon
    left SENDING (the very case the extension is for)."""
    data = tmp_path / "data"
    enrolled_till(hub, data, "till-1").stop()
    conf = tmp_path / "tillpoint.toml"
    conf.write_text(
        f'device_id = "till-1"\ndata_dir = "{data}"\n'
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        '[http]\nlisten = "127.0.0.1:0"\n[metrics]\nenabled = false\n'
        "[hub]\nredeem_timeout_ms = 60000\n"
        f'[printer]\nkind = "network"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        "confirm_timeout_s = 40\nstatus_timeout_s = 0.5\n"
    )
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    env.pop("TILLPOINT_DEVICE_ID", None)
    exe = Path(sys.executable).parent / "tillpoint"
    proc = subprocess.Popen([exe, "--config", conf, "run"], env=env, stderr=subprocess.DEVNULL)
    procs.append(proc)
    try:
        assert notify.recv(200).decode() == "READY=1"
        proc.send_signal(signal.SIGTERM)
        said = notify.recv(200).decode().split("\n")
        assert said[0] == "STOPPING=1"
        extend = dict(line.split("=", 1) for line in said[1:])
        # the calls: a release's 60 s and the hold's own 60 s, then the ledger's 5 s;
        # then the display's 2 s and the coupon's 40 + 0.5 + 5 s
        assert int(extend["EXTEND_TIMEOUT_USEC"]) >= (120 + 5 + 2 + 40 + 0.5 + 5) * 1_000_000
        assert proc.wait(timeout=30) == 0
    finally:
        notify.close()
