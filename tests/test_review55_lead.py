"""Review 55 (lead): `hub import -` stopped while its copy is created; the authoriser's
give-back rule at one point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .test_review30_sync30 import enrolled, expiring_hub, refund_whole, sale

# `hub import -` run as the CLI does, with `os.open` sending the process SIGTERM the
# moment the copy of standard input is created: inside `tempfile`'s creation, after the
# file exists and before its name reaches the import (a window that only a loaded
# machine's timing hit before). The signal is real; only its moment is chosen.
STOPPED_INSIDE_CREATION = textwrap.dedent(
    """
    import os, signal, sys
    from tillpoint.sync.hub_import import SPOOL_PREFIX

    real_open = os.open

    def open_then_stopped(path, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        if SPOOL_PREFIX in os.fspath(path):
            os.kill(os.getpid(), int(sys.argv[1]))
        return fd

    os.open = open_then_stopped
    from tillpoint.agent.cli import main
    sys.exit(main(["hub", "import", "-", "--hub-dir", sys.argv[2]]))
    """
)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_hub_import_from_stdin_stopped_while_its_copy_is_created_leaves_none(
    sig: str, tmp_path: Path
) -> None:
    """docs/CONTRACT.md §10 (`hub import -`'s copy of standard input is removed
    afterwards): a SIGTERM or SIGHUP that came while `tempfile` was creating the copy
    (the file made, its name not yet returned) ended the import with the copy, as large as
    the chain's export, left in the hub's directory until the next import or serve. The
    stop is now put off until the copy is made and locked, then acted on: exit 128+N, no
    traceback, no copy."""
    import signal

    hub_dir = tmp_path / "hub"
    env = {**os.environ, "TILLPOINT_DATA_DIR": str(tmp_path / "data")}
    signum = int(getattr(signal, sig))
    proc = subprocess.run(
        [sys.executable, "-c", STOPPED_INSIDE_CREATION, str(signum), str(hub_dir)],
        input=b'{"customer": {"id": "c-1", "balancePoints": 10}}\n',
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 128 + signum, proc.stderr
    assert b"Traceback" not in proc.stderr, proc.stderr
    assert list(hub_dir.glob(".import-stdin-*")) == []


def test_one_point_a_refund_gives_back_into_an_expired_batch_is_not_spent_again(
    tmp_path: Path,
) -> None:
    """docs/CONTRACT.md §9, §16 (points given back into a batch that has expired stay
    expired, at the hub too), at its smallest: till A's sale at 23:50 spends 1 point, taken
    from the 200 that expire at midnight, and A refunds it whole at 00:10: the point goes
    back into its batch, expired, and the 8 the sale earned are taken back. Till B at 00:12
    takes the 100 that never expire (the hub knows A's sale by its hold: 1 point from the
    expiring batch). At 00:15 A's next sale asks for as many as allowed, its sale and refund
    not sent yet: nothing is left, 0, not 1 (the given-back point counted as if it were
    still alive; the authoriser's rule for give-backs, `points > 0`, held as `> 1` did)."""
    hub = expiring_hub(tmp_path / "hub")  # its tills not started: nothing is sent
    a = enrolled(hub, tmp_path, "till-a")
    b = enrolled(hub, tmp_path, "till-b")
    try:
        one = a.agent.checkout(sale("a-1", "2026-11-30T23:50:00+03:00", 1))
        assert (one.mode, one.redeemed_points, one.earned_points) == ("ONLINE", 1, 8)
        back = a.agent.refund(refund_whole("a-1", "2026-12-01T00:10:00+03:00"))
        assert (back.returned_points, back.taken_back_points) == (1, 8)
        other = b.agent.checkout(sale("b-1", "2026-12-01T00:12:00+03:00", -1))
        assert (other.mode, other.redeemed_points) == ("ONLINE", 100)
        two = a.agent.checkout(sale("a-2", "2026-12-01T00:15:00+03:00", -1))
        assert (two.mode, two.redeemed_points) == ("ONLINE", 0)
    finally:
        a.stop()
        b.stop()
        hub.stop()
